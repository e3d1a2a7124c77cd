// Shared by the knex and Sequelize scenarios of the ORM matrix
// (tests/orm.rs): step reporting, expectations, and the plaintexts written.
'use strict';

const [, script, TAG, PORT] = process.argv;
const orm = require('path').basename(script, '.js');
const sentinels = [];
let step = 'start';

module.exports = {
  TAG,
  PORT: Number(PORT),
  email(who) {
    const v = `${who}.${TAG}@example.com`;
    sentinels.push(v);
    return v;
  },
  name(who) {
    const v = `${who[0].toUpperCase()}${who.slice(1)} ${TAG}`;
    sentinels.push(v);
    return v;
  },
  step(s) {
    step = s;
  },
  ok() {
    console.log(JSON.stringify({ orm, step, ok: true }));
  },
  expect(got, want, what) {
    const g = JSON.stringify(got);
    const w = JSON.stringify(want);
    if (g !== w) throw new Error(`${step}: ${what}: got ${g}, want ${w}`);
  },
  // Each of `attempts` must be refused by pgveil (0A000 or 42501).
  async refused(attempts) {
    for (const [what, f] of Object.entries(attempts)) {
      let err = null;
      try {
        await f();
      } catch (e) {
        err = e;
      }
      const code = err && (err.code || (err.parent && err.parent.code));
      if (!['0A000', '42501'].includes(code)) {
        throw new Error(`${step}: ${what} was not refused (${err ? String(err) : 'it ran'})`);
      }
    }
  },
  final(users) {
    console.log(JSON.stringify({ step: 'final', users, sentinels }));
  },
  async main(run) {
    try {
      await run();
    } catch (e) {
      console.log(JSON.stringify({ orm, step, ok: false, error: String(e && e.stack || e) }));
      process.exitCode = 1;
    }
  },
};
