// The pgveil driver-matrix scenario for node-postgres (run by tests/drivers.rs).
//
//     node matrix.js TAG NN PORT
//
// TAG and NN make the values unique to this run (see `Scenario` in
// tests/drivers.rs); PORT is pgveil's. Prints one JSON object per step and
// exits 1 on the first mismatch.
'use strict';

const { Client, types } = require('pg');

const [TAG, NN, PORT] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const PREPARED_RUNS = 12;
const REFUSED = 'SELECT id FROM users ORDER BY email'; // pgveil refuses: 0A000
let STEP = 'start';

// Dates as text ('YYYY-MM-DD'), not JavaScript Date objects in local time.
types.setTypeParser(1082, (v) => v);

const email = (who) => `${TAG}-${who}@example.com`;
const name = (what) => `${TAG} ${what}`;
const ssn = (mid) => `9${String(NN).padStart(2, '0')}-${mid}`;
const bobVariant = () => `  ${email('bob').toUpperCase().replace('EXAMPLE', 'Example')} `;

const DANA = [name('Dana Patient'), '1984-02-29', ssn('11-2222'), 87];
const ELI = [name('Eli Patient'), '1990-01-15', ssn('33-4444'), 12];
const FAY = [name('Fay Rolled Back'), '2001-07-04', ssn('55-6666'), 5];
const INS_USER = 'INSERT INTO users (email, name) VALUES ($1, $2)';
const INS_MEMBER =
  'INSERT INTO phi.member_profile (legal_name, date_of_birth, ssn, risk_score) VALUES ($1, $2, $3, $4)';

function ok(detail = {}) {
  console.log(JSON.stringify({ driver: 'node-postgres', step: STEP, ok: true, ...detail }));
}

function expect(got, want, what) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) throw new Error(`${what}: got ${g}, want ${w}`);
}

const isEnvelope = (b) => Buffer.isBuffer(b) && b.subarray(0, 2).toString('latin1') === 'pv';
// No name (tag and a space) or email of this run in a stored value.
const plaintextFree = (v) => {
  const t = String(Buffer.isBuffer(v) ? v.toString('latin1') : v).toLowerCase();
  return !t.includes(`${TAG} `.toLowerCase()) && !t.includes('@example.com');
};

async function connect(role) {
  const c = new Client({ host: '127.0.0.1', port: PORT, user: role, database: 'app', ssl: false });
  await c.connect();
  return c;
}

const rows = (r) => r.rows.map((row) => Object.values(row));

async function main() {
  const app = await connect('calmony_app');
  const doc = await connect('clinician');

  STEP = 'insert';
  for (const who of ['ann', 'bob', 'cat']) {
    const r = await app.query(INS_USER, [email(who), name(`${who[0].toUpperCase()}${who.slice(1)} Example`)]);
    expect(r.rowCount, 1, 'insert rowCount');
  }
  await doc.query(INS_MEMBER, DANA);
  await doc.query(INS_MEMBER, ELI);
  ok();

  STEP = 'lookup';
  expect(rows(await app.query('SELECT name FROM users WHERE email = $1', [bobVariant()])), [[name('Bob Example')]], 'lookup bob');
  expect(rows(await app.query('SELECT name FROM users WHERE email = $1', [email('nobody')])), [], 'miss');
  const digits = ssn('11-2222').replace(/-/g, '');
  expect(
    rows(await doc.query('SELECT legal_name, date_of_birth, risk_score FROM phi.member_profile WHERE ssn = $1', [digits])),
    [[DANA[0], DANA[1], 87]],
    'lookup dana',
  );
  const intake = await connect('intake');
  const ir = await intake.query('SELECT id, legal_name FROM phi.member_profile WHERE ssn = $1', [digits]);
  expect(ir.rowCount, 1, 'intake may search');
  expect(isEnvelope(ir.rows[0].legal_name), true, 'intake reads ciphertext');
  await intake.end();
  ok();

  STEP = 'update';
  expect((await app.query('UPDATE users SET name = $1 WHERE email = $2', [name('Bob Updated'), email('bob')])).rowCount, 1, 'name');
  expect((await app.query('UPDATE users SET email = $1 WHERE email = $2', [email('cat2'), email('cat')])).rowCount, 1, 'email');
  expect(rows(await app.query('SELECT name FROM users WHERE email = $1', [email('cat2')])), [[name('Cat Example')]], 'new email');
  expect(
    (await doc.query('UPDATE phi.member_profile SET risk_score = $1 WHERE ssn = $2', [88, ssn('11-2222')])).rowCount,
    1,
    'risk_score',
  );
  ok();

  STEP = 'delete';
  expect((await app.query('DELETE FROM users WHERE email = $1', [email('ann')])).rowCount, 1, 'ann');
  expect((await doc.query('DELETE FROM phi.member_profile WHERE ssn = $1', [ssn('33-4444')])).rowCount, 1, 'eli');
  ok();

  STEP = 'read_plaintext';
  expect(
    rows(await app.query('SELECT email, name FROM users ORDER BY id')),
    [
      [email('bob'), name('Bob Updated')],
      [email('cat2'), name('Cat Example')],
    ],
    'users',
  );
  // Simple protocol too (no parameters: node-postgres sends a Query).
  expect(
    rows(await doc.query('SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile')),
    [[DANA[0], DANA[1], DANA[2], 88]],
    'member_profile',
  );
  ok();

  STEP = 'read_ciphertext';
  const dba = await connect('dba');
  const dr = await dba.query('SELECT email, name FROM users ORDER BY id');
  expect(dr.rowCount, 2, 'dba sees the rows');
  for (const r of dr.rows) {
    expect(isEnvelope(r.email), true, 'email is an envelope');
    expect(r.name.startsWith('pgv1:') && plaintextFree(r.name), true, 'name is an envelope');
  }
  const dm = await dba.query('SELECT legal_name, date_of_birth, ssn, risk_score FROM phi.member_profile WHERE id > $1', [0]);
  for (const v of Object.values(dm.rows[0])) expect(isEnvelope(v) && plaintextFree(v), true, 'member_profile envelope');
  await dba.end();
  ok();

  STEP = 'transaction_rollback';
  await app.query('BEGIN');
  await app.query(INS_USER, [email('tx'), name('Tx Rolled Back')]);
  expect(rows(await app.query('SELECT name FROM users WHERE email = $1', [email('tx')])), [[name('Tx Rolled Back')]], 'own write');
  await app.query('UPDATE users SET name = $1 WHERE email = $2', [name('Bob In Tx'), email('bob')]);
  await app.query('ROLLBACK');
  expect(rows(await app.query('SELECT count(*)::int FROM users WHERE email = $1', [email('tx')])), [[0]], 'rolled back');
  expect(rows(await app.query('SELECT name FROM users WHERE email = $1', [email('bob')])), [[name('Bob Updated')]], 'bob');
  await doc.query('BEGIN');
  await doc.query(INS_MEMBER, FAY);
  await doc.query('ROLLBACK');
  expect(rows(await doc.query('SELECT count(*)::int FROM phi.member_profile WHERE ssn = $1', [FAY[2]])), [[0]], 'member');
  ok();

  STEP = 'prepared_many';
  // Named statements: parsed once per connection, then Bind/Execute only.
  for (let i = 0; i < PREPARED_RUNS; i++) {
    await app.query({ name: 'drv_insert', text: INS_USER, values: [email(`p${i}`), name(`Prepared ${i}`)] });
  }
  for (let i = 0; i < PREPARED_RUNS; i++) {
    const r = await app.query({
      name: 'drv_lookup',
      text: 'SELECT name FROM users WHERE email = $1',
      values: [email(`P${i}`).toUpperCase()],
    });
    expect(rows(r), [[name(`Prepared ${i}`)]], `prepared lookup ${i}`);
  }
  const named = rows(
    await app.query("SELECT name FROM pg_prepared_statements WHERE name LIKE 'drv_%' ORDER BY name"),
  );
  expect(named, [['drv_insert'], ['drv_lookup']], 'server-side prepared statements');
  ok();

  STEP = 'pipeline_error';
  // node-postgres does not pipeline: it sends a query only after the
  // previous one's ReadyForQuery. The closest thing is one simple Query
  // with several statements: the committed transaction before the refused
  // statement stands, the statement after it never runs.
  let err = null;
  try {
    await app.query(
      `BEGIN; INSERT INTO users (email, name) VALUES ('${email('pipe1')}', '${name('Pipe One')}'); COMMIT; ` +
        `${REFUSED}; INSERT INTO users (email, name) VALUES ('${email('pipe2')}', '${name('Pipe Two')}')`,
    );
  } catch (e) {
    err = e;
  }
  expect(err && err.code, '0A000', 'refused in the middle');
  expect(rows(await app.query('SELECT name FROM users WHERE email = $1', [email('pipe1')])), [[name('Pipe One')]], 'pipe1 stands');
  expect(rows(await app.query('SELECT count(*)::int FROM users WHERE email = $1', [email('pipe2')])), [[0]], 'pipe2 never ran');
  // The same refusal in the extended protocol (parameters make
  // node-postgres send Parse/Bind/Execute/Sync) fails alone.
  err = null;
  try {
    await app.query(`${REFUSED} LIMIT $1`, [5]);
  } catch (e) {
    err = e;
  }
  expect(err && err.code, '0A000', 'refused (extended protocol)');
  ok();

  STEP = 'usable_after_error';
  expect((await app.query(INS_USER, [email('pipe3'), name('Pipe Three')])).rowCount, 1, 'insert after the error');
  expect(
    rows(await app.query({ name: 'drv_lookup', text: 'SELECT name FROM users WHERE email = $1', values: [email('bob')] })),
    [[name('Bob Updated')]],
    'prepared lookup after the error',
  );
  ok();

  await app.end();
  await doc.end();
}

main().then(
  () => {
    console.log(JSON.stringify({ driver: 'node-postgres', step: 'done', ok: true }));
  },
  (e) => {
    console.log(JSON.stringify({ driver: 'node-postgres', step: STEP, ok: false, error: String(e && e.stack ? e.message : e) }));
    console.error(e);
    process.exit(1);
  },
);
