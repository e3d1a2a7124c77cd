// knex 3 on node-postgres through pgveil (tests/orm.rs), and pg-cursor.
//   node knex.js <tag> <pgveil port>
'use strict';

const c = require('./common');
const Cursor = require('pg-cursor');

c.main(async () => {
  const db = require('knex')({
    client: 'pg',
    connection: { host: '127.0.0.1', port: c.PORT, user: 'calmony_app', database: 'app' },
    pool: { min: 0, max: 2 },
  });
  try {
    c.step('insert');
    const [ada] = await db('users').insert({ email: c.email('ada'), name: c.name('ada') }).returning('id');
    c.expect(typeof ada.id, 'string', 'bigint id returned');
    c.ok();

    c.step('batch_insert');
    // One INSERT … VALUES ($1, $2), ($3, $4), … RETURNING.
    const rows = [0, 1, 2, 3, 4].map((i) => ({ email: c.email(`bulk${i}`), name: c.name(`bulk${i}`) }));
    const ids = await db('users').insert(rows).returning(['id', 'email']);
    c.expect(ids.map((r) => r.email), rows.map((r) => r.email), 'RETURNING decrypted');
    await db.batchInsert('users', [5, 6].map((i) => ({ email: c.email(`chunk${i}`), name: c.name(`chunk${i}`) })), 1);
    c.ok();

    c.step('lookup');
    const bob = await db('users').where({ email: c.email('bulk2') }).first('name');
    c.expect(bob.name, c.name('bulk2'), 'where');
    const some = await db('users').whereIn('email', [c.email('bulk0'), c.email('chunk6')]).orderBy('id').pluck('name');
    c.expect(some, [c.name('bulk0'), c.name('chunk6')], 'whereIn');
    c.ok();

    c.step('refusals');
    // What docs/orm.md lists as refused, with the fix it names.
    await c.refused({
      whereLike: () => db('users').whereLike('email', 'bulk%'),
      whereILike: () => db('users').whereILike('email', 'bulk%'),
      orderBy: () => db('users').orderBy('email'),
      lower: () => db('users').whereRaw('lower(email) = ?', ['x']),
      insertSelect: () => db('users').insert(db.select('name as email').from('users')),
    });
    c.ok();

    c.step('update');
    c.expect(await db('users').where('email', c.email('bulk1')).update({ name: c.name('bulk1 renamed') }), 1, 'update');
    c.ok();

    c.step('delete');
    c.expect(await db('users').where('email', c.email('bulk3')).del(), 1, 'del');
    c.ok();

    c.step('transaction_rollback');
    await db
      .transaction(async (trx) => {
        await trx('users').insert({ email: c.email('ghost'), name: c.name('ghost') });
        throw new Error('roll back');
      })
      .catch(() => {});
    c.expect(await db('users').where('email', c.email('ghost')).count('* as n'), [{ n: '0' }], 'rolled back');
    c.ok();

    c.step('pg_cursor');
    // A protocol portal read two rows at a time (Execute with a row limit).
    const plain = (await db('users').orderBy('id').select('email', 'name')).map((r) => [r.email, r.name]);
    const client = await db.client.acquireConnection();
    try {
      await client.query('BEGIN');
      const cur = client.query(new Cursor('SELECT email, name FROM users ORDER BY id'));
      const got = [];
      for (;;) {
        const batch = await cur.read(2);
        if (batch.length === 0) break;
        got.push(...batch.map((r) => [r.email, r.name]));
      }
      await cur.close();
      await client.query('COMMIT');
      c.expect(got, plain, 'cursor rows equal the plain SELECT');
    } finally {
      await db.client.releaseConnection(client);
    }
    c.expect(plain.length, 7, 'rows');
    c.ok();
    c.final(plain);
  } finally {
    await db.destroy();
  }
});
