// Sequelize 6 on node-postgres through pgveil (tests/orm.rs).
//   node sequelize.js <tag> <pgveil port>
'use strict';

const c = require('./common');
const { Sequelize, DataTypes, Op } = require('sequelize');

c.main(async () => {
  const db = new Sequelize('app', 'calmony_app', null, {
    host: '127.0.0.1',
    port: c.PORT,
    dialect: 'postgres',
    logging: false,
    pool: { min: 0, max: 2 },
  });
  const User = db.define(
    'User',
    {
      id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
      email: DataTypes.STRING(254),
      name: DataTypes.TEXT,
      plan: { type: DataTypes.TEXT, defaultValue: 'free' },
    },
    { tableName: 'users', timestamps: false },
  );
  try {
    c.step('create');
    const ada = await User.create({ email: c.email('ada'), name: c.name('ada') });
    c.expect((await User.findByPk(ada.id)).email, c.email('ada'), 'findByPk');
    c.ok();

    c.step('bulk_create');
    // One INSERT … VALUES (…), (…) RETURNING.
    const made = await User.bulkCreate([0, 1, 2, 3, 4].map((i) => ({ email: c.email(`bulk${i}`), name: c.name(`bulk${i}`) })));
    c.expect(made.every((u) => u.id != null), true, 'ids returned');
    c.ok();

    c.step('lookup');
    c.expect((await User.findOne({ where: { email: c.email('bulk2') } })).name, c.name('bulk2'), 'findOne');
    const some = await User.findAll({ where: { email: { [Op.in]: [c.email('bulk0'), c.email('bulk4')] } }, order: [['id', 'ASC']] });
    c.expect(some.map((u) => u.name), [c.name('bulk0'), c.name('bulk4')], 'Op.in');
    c.ok();

    c.step('refusals');
    // What docs/orm.md lists as refused, with the fix it names.
    await c.refused({
      like: () => User.findAll({ where: { email: { [Op.like]: 'bulk%' } } }),
      iLike: () => User.findAll({ where: { email: { [Op.iLike]: 'bulk%' } } }),
      substring: () => User.findAll({ where: { email: { [Op.substring]: 'bulk' } } }),
      order: () => User.findAll({ order: [['email', 'ASC']] }),
    });
    c.ok();

    c.step('update');
    const [n] = await User.update({ name: c.name('bulk1 renamed') }, { where: { email: c.email('bulk1') } });
    c.expect(n, 1, 'update');
    ada.name = c.name('ada renamed');
    await ada.save();
    c.ok();

    c.step('destroy');
    c.expect(await User.destroy({ where: { email: c.email('bulk3') } }), 1, 'destroy');
    c.ok();

    c.step('find_or_create');
    // findOrCreate on PostgreSQL wraps its INSERT in a temporary PL/pgSQL
    // function holding the values: pgveil cannot see inside it and refuses
    // it, naming the fix. findCreateFind does the same job with plain
    // statements (SELECT, then INSERT … ON CONFLICT DO NOTHING in a
    // transaction).
    let refused = null;
    try {
      await User.findOrCreate({ where: { email: c.email('foc') }, defaults: { name: c.name('foc') } });
    } catch (e) {
      refused = e;
    }
    c.expect(refused && refused.parent && refused.parent.code, '0A000', 'findOrCreate refused');
    c.expect(/findCreateFind/.test(refused.message), true, 'the refusal names the fix');
    const [u, created] = await db.transaction((t) =>
      User.findCreateFind({ where: { email: c.email('foc') }, defaults: { name: c.name('foc') }, transaction: t }),
    );
    c.expect(created, true, 'created first');
    const [u2, again] = await User.findCreateFind({ where: { email: c.email('foc') }, defaults: { name: c.name('other') } });
    c.expect([again, u2.id], [false, u.id], 'found second');
    c.expect(await User.count({ where: { email: c.email('foc') } }), 1, 'one row');
    c.ok();

    c.step('transaction_rollback');
    await db
      .transaction(async (t) => {
        await User.create({ email: c.email('ghost'), name: c.name('ghost') }, { transaction: t });
        throw new Error('roll back');
      })
      .catch(() => {});
    c.expect(await User.count({ where: { email: c.email('ghost') } }), 0, 'rolled back');
    c.ok();

    const plain = (await User.findAll({ order: [['id', 'ASC']] })).map((x) => [x.email, x.name]);
    c.expect(plain.length, 6, 'rows');
    c.final(plain);
  } finally {
    await db.close();
  }
});
