'use strict'
// pgward's node-postgres compatibility client (run by tests/compat/node.rs).
//
//   node compat.js SECTION...
//
// Connects where the libpq variables say (PGHOST, PGPORT, PGUSER, PGPASSWORD,
// PGDATABASE; node-postgres reads those itself, PGSSLMODE and PGSSLROOTCERT
// are applied here) and prints one JSON line per observation, in a fixed
// order and without anything that legitimately differs between a direct and
// a proxied connection (backend pids, notification process ids, TLS state,
// timings), so two runs can be compared line for line.
//
// Sections:
//   types     parameterized queries over many types, and over the kinds table
//   write     a temporary table filled and read back with parameters (needs
//             a role that may write)
//   patients  parameterized and named prepared queries over patients/visits
//   cursor    pg-cursor reading large results in chunks
//   notify    LISTEN/NOTIFY between two connections; the sender connects
//             where NODE_COMPAT_SENDER (JSON {host, port, user, password,
//             database, sslmode, sslrootcert}) says, else like the listener
//   refusals  statements a read-only masked role is refused, simple and
//             extended protocol, and that the connection goes on afterwards
//
// Exit status 0 means every section ran; an unexpected error exits 1.

const crypto = require('crypto')
const fs = require('fs')
const pg = require('pg')
const Cursor = require('pg-cursor')

// ---------------------------------------------------------------- output

function canon(v) {
  if (v === null || v === undefined) return null
  if (Buffer.isBuffer(v)) return '\\x' + v.toString('hex')
  if (v instanceof Date) return isNaN(v.getTime()) ? 'Invalid Date' : v.toISOString()
  if (typeof v === 'bigint') return v.toString()
  if (Array.isArray(v)) return v.map(canon)
  if (typeof v === 'object') {
    const out = {}
    for (const k of Object.keys(v)) out[k] = canon(v[k])
    return out
  }
  return v
}

function emit(obj) {
  process.stdout.write(JSON.stringify(canon(obj)) + '\n')
}

function fields(res) {
  return res.fields.map((f) => [f.name, f.dataTypeID])
}

function errorOf(e) {
  return { code: e.code || null, severity: e.severity || null, message: e.message }
}

// ---------------------------------------------------------------- connecting

function sslFor(mode, rootcert) {
  switch (mode || 'prefer') {
    case 'disable':
      return false
    case 'verify-full':
      // node-postgres passes the host to tls.connect, which checks the
      // certificate against it (IP addresses against IP SANs).
      return { ca: fs.readFileSync(rootcert), rejectUnauthorized: true }
    case 'verify-ca':
      return {
        ca: fs.readFileSync(rootcert),
        rejectUnauthorized: true,
        checkServerIdentity: () => undefined,
      }
    default:
      throw new Error(`PGSSLMODE=${mode} is not supported by this script`)
  }
}

function configFromEnv() {
  const env = process.env
  return {
    host: env.PGHOST,
    port: Number(env.PGPORT),
    user: env.PGUSER,
    password: env.PGPASSWORD,
    database: env.PGDATABASE,
    sslmode: env.PGSSLMODE,
    sslrootcert: env.PGSSLROOTCERT,
  }
}

async function connect(cfg = configFromEnv()) {
  const client = new pg.Client({
    host: cfg.host,
    port: cfg.port,
    user: cfg.user,
    password: cfg.password,
    database: cfg.database,
    ssl: sslFor(cfg.sslmode, cfg.sslrootcert),
    application_name: 'pgward-compat-node',
    connectionTimeoutMillis: 20000,
  })
  await client.connect()
  // Ordinary errors are reported through the query that caused them; an
  // 'error' event means the connection itself broke.
  client.on('error', (e) => {
    console.error('connection error:', e)
    process.exit(1)
  })
  return client
}

// ---------------------------------------------------------------- sections

async function types(c) {
  // Scalars of many types sent as parameters and returned.
  const scalars = await c.query(
    `SELECT $1::int AS i, $2::bigint AS b, $3::text AS t, $4::timestamptz AS ts,
            $5::jsonb AS j, $6::numeric AS n, $7::int[] AS ia, $8::text[] AS ta,
            $9::bool AS flag, $10::bytea AS raw, $11::uuid AS uid, $12::date AS day,
            $13::float8 AS f, $14::text AS nothing, $15::jsonb -> 'k' AS jk,
            $16::numeric(12,2) * 3 AS n3, $17::timestamptz + interval '1 day' AS tomorrow`,
    [
      42,
      '9007199254740993',
      'héllo, wörld; \'quoted\' "double" \\ back',
      new Date(Date.UTC(2024, 2, 1, 12, 34, 56, 789)),
      JSON.stringify({ k: [1, 2, { x: null }], s: 'ü' }),
      '12345678901234567890.123456789',
      [1, -2, 3, null],
      ['a', 'b,c', 'd"e', null, ''],
      true,
      Buffer.from([0, 1, 2, 254, 255]),
      'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
      '2020-02-29',
      1.5e-7,
      null,
      '{"k": {"deep": true}}',
      '1234.56',
      '2024-12-31T23:00:00Z',
    ]
  )
  emit({ s: 'types', q: 'scalars', fields: fields(scalars), rows: scalars.rows })

  // The same values in array mode, typed by the server (pg_typeof).
  const typed = await c.query({
    text: `SELECT pg_typeof($1::int)::text, pg_typeof($2::jsonb)::text, pg_typeof($3::numeric[])::text,
                  $3::numeric[] AS nums, array_length($4::text[], 1) AS len`,
    values: [1, '{}', ['1.5', '2.25'], ['x', 'y', 'z']],
    rowMode: 'array',
  })
  emit({ s: 'types', q: 'typed', fields: fields(typed), rows: typed.rows })

  // The kinds table filtered by parameters of its own types.
  const kinds = await c.query(
    `SELECT * FROM kinds
      WHERE id = ANY($1::int[]) AND at > $2 AND data @> $3 AND amount >= $4
        AND tags && $5 AND flag = $6 AND m = ANY($7::mood[])
      ORDER BY id`,
    [
      [2, 4, 6, 8, 10, 12, 150, 151],
      new Date('2024-03-01T13:00:00Z'),
      JSON.stringify({}),
      '20.00',
      ['t4', 't8', 't10', 't12', 't150', 'u8', 'u1'],
      true,
      ['calm', 'tense', 'elated'],
    ]
  )
  emit({ s: 'types', q: 'kinds', fields: fields(kinds), rows: kinds.rows })

  // Aggregates over the whole table, as a cross-check of every row.
  const agg = await c.query(
    `SELECT count(*) AS n, sum(amount) AS amount, sum(big) AS big,
            md5(string_agg(k::text, '|' ORDER BY id)) AS digest
       FROM kinds k WHERE id BETWEEN $1 AND $2`,
    [1, 200]
  )
  emit({ s: 'types', q: 'kinds-aggregate', rows: agg.rows })

  // The empty query (EmptyQueryResponse).
  const empty = await c.query('')
  emit({ s: 'types', q: 'empty', command: empty.command, rowCount: empty.rowCount, rows: empty.rows })
}

async function write(c) {
  await c.query(`CREATE TEMP TABLE node_roundtrip (
      id int PRIMARY KEY, m mood, a address, tags text[], data jsonb,
      amount numeric(12,2), at timestamptz, day date, raw bytea, uid uuid,
      ratio double precision, big bigint, flag boolean)`)
  const insert = {
    name: 'node_insert',
    text: `INSERT INTO node_roundtrip VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
           RETURNING id, amount, at`,
  }
  await c.query('BEGIN')
  let returned = []
  for (let i = 1; i <= 25; i++) {
    const res = await c.query({
      ...insert,
      values: [
        i,
        ['calm', 'tense', 'elated'][i % 3],
        `("Side St ${i}",${String(i).padStart(5, '0')})`,
        ['w' + i, i % 2 ? null : 'even'],
        { i, nested: { list: [i, i * 2] } },
        (i * 3.5).toFixed(2),
        new Date(Date.UTC(2023, 0, 1) + i * 3600 * 1000),
        `2021-06-${String(i).padStart(2, '0')}`,
        Buffer.from([i, 255 - i]),
        crypto.createHash('md5').update(String(i)).digest('hex'),
        i / 3,
        (BigInt(i) * 100000000007n).toString(),
        i % 2 === 0,
      ],
    })
    returned = returned.concat(res.rows)
  }
  await c.query('COMMIT')
  emit({ s: 'write', q: 'inserted-returning', rows: returned })

  // A rolled-back write leaves nothing behind.
  await c.query('BEGIN')
  await c.query('DELETE FROM node_roundtrip WHERE id > $1', [10])
  await c.query('ROLLBACK')

  const back = await c.query('SELECT * FROM node_roundtrip WHERE id = ANY($1) ORDER BY id', [[1, 2, 24, 25]])
  emit({ s: 'write', q: 'read-back', fields: fields(back), rows: back.rows })
  const n = await c.query('SELECT count(*)::int AS n FROM node_roundtrip')
  emit({ s: 'write', q: 'count-after-rollback', rows: n.rows })

  // Copying kinds through parameters: every type back in, compared server-side.
  const copied = await c.query(
    `INSERT INTO node_roundtrip SELECT id + 1000, m, a, tags, data, amount, at, day, raw, uid, ratio, big, flag
       FROM kinds WHERE id <= $1`,
    [5]
  )
  emit({ s: 'write', q: 'insert-select', command: copied.command, rowCount: copied.rowCount })
  const upd = await c.query('UPDATE node_roundtrip SET flag = NOT flag WHERE id > $1 RETURNING id', [1003])
  emit({ s: 'write', q: 'update', command: upd.command, rowCount: upd.rowCount, rows: upd.rows })

  // Notices reach the client, in order, and attached to no query.
  const notices = []
  const onNotice = (n) => notices.push({ severity: n.severity, code: n.code, message: n.message })
  c.on('notice', onNotice)
  await c.query("DO $$BEGIN RAISE NOTICE 'first %', 1; RAISE WARNING 'second'; END$$")
  await c.query('SELECT 1')
  c.removeListener('notice', onNotice)
  emit({ s: 'write', q: 'notices', notices })

  // Database errors, simple and extended, and the connection goes on.
  const errors = []
  for (const [text, values] of [
    ['SELECT 1 / 0', undefined],
    ['SELECT 1 / $1::int', [0]],
    ['SELECT $1::int', ['not a number']],
    ['INSERT INTO node_roundtrip (id) VALUES ($1)', [1]],
    ['SELECT nosuch FROM node_roundtrip', undefined],
  ]) {
    try {
      await c.query(text, values)
      errors.push({ text, error: null })
    } catch (e) {
      const next = await c.query('SELECT $1::int + 1 AS next', [errors.length])
      errors.push({ text, error: errorOf(e), constraint: e.constraint || null, next: next.rows })
    }
  }
  emit({ s: 'write', q: 'errors', errors })
}

async function patients(c) {
  const ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
  const res = await c.query(
    'SELECT id, clinic_id, name, ssn, email, dob, phone FROM patients WHERE id = ANY($1::int[]) ORDER BY id',
    [ids]
  )
  emit({ s: 'patients', q: 'by-ids', fields: fields(res), rows: res.rows })

  // One named statement, parsed once and executed repeatedly.
  const byId = {
    name: 'node_patient_by_id',
    text: 'SELECT id, clinic_id, ssn, email, dob FROM patients WHERE id = $1',
  }
  for (const id of [3, 4, 6, 9, 3]) {
    const r = await c.query({ ...byId, values: [id] })
    emit({ s: 'patients', q: 'prepared-by-id', id, rowCount: r.rowCount, rows: r.rows })
  }
  const visits = {
    name: 'node_visits_since',
    text: `SELECT id, patient_id, clinic_id, visited_at, reason FROM visits
            WHERE visited_at >= $1 AND reason = $2 ORDER BY id LIMIT $3`,
  }
  for (const [since, reason] of [
    ['2025-11-01T00:00:00Z', 'flu'],
    ['2025-11-15T00:00:00Z', 'check-up'],
  ]) {
    const r = await c.query({ ...visits, values: [since, reason, 5] })
    emit({ s: 'patients', q: 'prepared-visits', since, reason, rows: r.rows })
  }
  const counts = await c.query({
    name: 'node_counts',
    text: 'SELECT clinic_id, count(*)::int AS n FROM patients GROUP BY clinic_id ORDER BY clinic_id',
  })
  emit({ s: 'patients', q: 'counts', rows: counts.rows })
  const again = await c.query({ name: 'node_counts' })
  emit({ s: 'patients', q: 'counts-by-name-only', rows: again.rows })

  // Several statements in one simple query: one result each.
  const multi = await c.query(
    'SELECT count(*)::int AS n FROM clinics; SELECT id, ssn, email FROM patients WHERE id IN (3, 4) ORDER BY id'
  )
  emit({
    s: 'patients',
    q: 'multi-statement',
    results: multi.map((r) => ({ command: r.command, fields: fields(r), rows: r.rows })),
  })
}

function readChunks(cursor, size) {
  return new Promise((resolve, reject) =>
    cursor.read(size, (err, rows) => (err ? reject(err) : resolve(rows)))
  )
}

async function cursor(c) {
  const size = 7919
  const cur = c.query(
    new Cursor('SELECT n, md5(n::text) AS h FROM generate_series(1, $1::int) AS n', [200000])
  )
  const digest = crypto.createHash('md5')
  let count = 0
  let sum = 0
  let chunks = 0
  let ordered = true
  for (;;) {
    const rows = await readChunks(cur, size)
    if (rows.length === 0) break
    chunks++
    for (const r of rows) {
      count++
      if (r.n !== count) ordered = false
      sum += r.n
      digest.update(r.h)
    }
  }
  await cur.close()
  const server = await c.query(
    `SELECT md5(string_agg(md5(n::text), '' ORDER BY n)) AS h FROM generate_series(1, $1::int) AS n`,
    [200000]
  )
  const clientDigest = digest.digest('hex')
  emit({
    s: 'cursor',
    q: 'generate-series',
    count,
    sum,
    chunks,
    ordered,
    digest: clientDigest,
    matchesServer: clientDigest === server.rows[0].h,
  })

  // A cursor over a real table, read in small chunks, closed early.
  const pcur = c.query(
    new Cursor('SELECT id, clinic_id, ssn, email FROM patients WHERE id > $1 ORDER BY id', [0])
  )
  const first = await readChunks(pcur, 3)
  const second = await readChunks(pcur, 3)
  await pcur.close()
  emit({ s: 'cursor', q: 'patients-first-chunks', rows: first.concat(second) })

  // The whole table through a cursor: a summary.
  const all = c.query(new Cursor('SELECT id, clinic_id, ssn, email, dob FROM patients ORDER BY id'))
  const seen = { count: 0, clinics: new Set(), digest: crypto.createHash('md5') }
  for (;;) {
    const rows = await readChunks(all, 100)
    if (rows.length === 0) break
    for (const r of rows) {
      seen.count++
      seen.clinics.add(r.clinic_id)
      seen.digest.update(JSON.stringify(canon(r)))
    }
  }
  await all.close()
  emit({
    s: 'cursor',
    q: 'patients-all',
    count: seen.count,
    clinics: [...seen.clinics].sort(),
    digest: seen.digest.digest('hex'),
  })

  // The connection is ordinary again after cursors.
  const after = await c.query('SELECT $1::text AS still', ['usable'])
  emit({ s: 'cursor', q: 'after', rows: after.rows })
}

function waitFor(listener, channel, n, ms) {
  return new Promise((resolve) => {
    const got = []
    const timer = setTimeout(() => finish(), ms)
    function onNote(msg) {
      if (msg.channel !== channel) return
      got.push(msg)
      if (got.length >= n) finish()
    }
    function finish() {
      clearTimeout(timer)
      listener.removeListener('notification', onNote)
      resolve(got)
    }
    listener.on('notification', onNote)
  })
}

async function notify(c) {
  // Channel names unique to this run (other runs may share the database);
  // the transcript shows them without the suffix.
  const suffix = `${process.pid}_${crypto.randomBytes(4).toString('hex')}`
  const chan = (name) => `node_${name}_${suffix}`
  const shown = (channel) => channel.slice(0, channel.length - suffix.length - 1)
  const sender = process.env.NODE_COMPAT_SENDER
    ? await connect(JSON.parse(process.env.NODE_COMPAT_SENDER))
    : await connect()
  const notes = (list) => list.map((m) => ({ channel: shown(m.channel), payload: m.payload }))

  try {
    const listen = await c.query(`LISTEN ${chan('main')}`)
    emit({ s: 'notify', q: 'listen', command: listen.command })

    let wait = waitFor(c, chan('main'), 4, 10000)
    await sender.query(`NOTIFY ${chan('main')}, 'plain'`)
    await sender.query('SELECT pg_notify($1, $2)', [chan('main'), 'with "quotes" and ünïcode'])
    await sender.query('BEGIN')
    await sender.query(`NOTIFY ${chan('main')}, 'in-transaction-1'`)
    await sender.query('SELECT pg_notify($1, $2)', [chan('main'), 'in-transaction-2'])
    await sender.query('COMMIT')
    emit({ s: 'notify', q: 'received', notes: notes(await wait) })

    // Rolled back: nothing arrives; after UNLISTEN: nothing arrives.
    wait = waitFor(c, chan('main'), 1, 1500)
    await sender.query('BEGIN')
    await sender.query(`NOTIFY ${chan('main')}, 'rolled-back'`)
    await sender.query('ROLLBACK')
    emit({ s: 'notify', q: 'after-rollback', notes: notes(await wait) })

    const unlisten = await c.query(`UNLISTEN ${chan('main')}`)
    emit({ s: 'notify', q: 'unlisten', command: unlisten.command })
    wait = waitFor(c, chan('main'), 1, 1500)
    await sender.query(`NOTIFY ${chan('main')}, 'after-unlisten'`)
    emit({ s: 'notify', q: 'after-unlisten', notes: notes(await wait) })

    // A notification that arrives while the listener is idle, then one
    // that arrives between two of its queries.
    await c.query(`LISTEN ${chan('idle')}`)
    wait = waitFor(c, chan('idle'), 2, 10000)
    await sender.query(`NOTIFY ${chan('idle')}, 'while-idle'`)
    await new Promise((r) => setTimeout(r, 200))
    const busy = await c.query('SELECT $1::int AS x, count(*) FROM generate_series(1, 500000)', [7])
    await sender.query(`NOTIFY ${chan('idle')}, 'after-query'`)
    emit({ s: 'notify', q: 'idle', busy: busy.rows[0].x, notes: notes(await wait) })

    // The listener notifying itself (refused for a role that may not NOTIFY:
    // then nothing may arrive).
    await c.query(`LISTEN ${chan('self')}`)
    wait = waitFor(c, chan('self'), 1, 1500)
    let error = null
    try {
      await c.query(`NOTIFY ${chan('self')}, 'from-listener'`)
    } catch (e) {
      error = errorOf(e)
    }
    emit({ s: 'notify', q: 'self', error, notes: notes(await wait) })
    await c.query('UNLISTEN *')
  } finally {
    await sender.end()
  }
}

// Runs `fn`; returns the error it raised (or null), and what the very next
// query on the same connection returns.
async function refused(c, label, fn) {
  let error = null
  try {
    const res = await fn()
    emit({ s: 'refusals', q: label, unexpectedlyOk: true, rows: res.rows })
  } catch (e) {
    error = errorOf(e)
  }
  const next = await c.query('SELECT $1::text AS next, count(*)::int AS n FROM clinics', [label])
  emit({ s: 'refusals', q: label, error, next: next.rows[0] })
}

async function refusals(c) {
  // Denied columns are absent for the role: an ordinary "does not exist".
  await refused(c, 'simple-denied-column', () => c.query('SELECT notes FROM visits'))
  await refused(c, 'extended-denied-column', () =>
    c.query('SELECT id, notes FROM visits WHERE id = $1', [1])
  )
  // Refused by pgward.
  await refused(c, 'simple-view', () => c.query('SELECT * FROM clinic_counts'))
  await refused(c, 'extended-view', () =>
    c.query('SELECT clinic FROM clinic_counts WHERE patients > $1', [0])
  )
  await refused(c, 'simple-update', () => c.query("UPDATE patients SET email = 'x' WHERE id = 3"))
  await refused(c, 'extended-update', () =>
    c.query('UPDATE patients SET email = $1 WHERE id = $2', ['x@example.org', 3])
  )
  await refused(c, 'extended-insert', () =>
    c.query('INSERT INTO clinics VALUES ($1, $2, $3)', [99, 'Nope', 'Nowhere'])
  )
  // A named statement that is refused is not remembered as prepared: using
  // the name again is refused again, the same way.
  const bad = { name: 'node_bad', text: 'SELECT clinic FROM clinic_counts WHERE patients > $1' }
  await refused(c, 'prepared-refused', () => c.query({ ...bad, values: [1] }))
  await refused(c, 'prepared-refused-again', () => c.query({ ...bad, values: [2] }))
  // A cursor over a refused statement.
  await refused(c, 'cursor-refused', async () => {
    const cur = c.query(new Cursor('SELECT * FROM clinic_counts WHERE patients > $1', [0]))
    try {
      return { rows: await readChunks(cur, 10) }
    } finally {
      await new Promise((r) => cur.close(() => r()))
    }
  })
  // A data error over a masked value: PostgreSQL's SQLSTATE, a message
  // that quotes no value.
  await refused(c, 'extended-data-error', () =>
    c.query('SELECT ssn::int FROM patients WHERE id = $1', [3])
  )
  await refused(c, 'simple-notify', () => c.query('NOTIFY node_refused'))
  await refused(c, 'extended-pg-notify', () => c.query('SELECT pg_notify($1, $2)', ['node_refused', 'x']))
  // Only channels the role's policy lists (the fixture lists node_*).
  await refused(c, 'listen-unlisted', () => c.query('LISTEN patient_updates'))

  // Inside a transaction: what the transaction looks like afterwards.
  await c.query('BEGIN')
  let inTx = null
  try {
    await c.query('SELECT clinic FROM clinic_counts WHERE patients > $1', [1])
  } catch (e) {
    inTx = errorOf(e)
  }
  let afterInTx
  try {
    const r = await c.query('SELECT 1 AS one')
    afterInTx = { rows: r.rows }
  } catch (e) {
    afterInTx = { error: errorOf(e) }
  }
  await c.query('ROLLBACK')
  const done = await c.query('SELECT $1::int AS ok', [1])
  emit({ s: 'refusals', q: 'in-transaction', error: inTx, after: afterInTx, afterRollback: done.rows })

  // A prepared statement that works, after all of the above.
  const good = await c.query({
    name: 'node_good',
    text: 'SELECT id, clinic_id FROM visits WHERE id = ANY($1::int[]) ORDER BY id',
    values: [[1, 2, 3, 4, 5, 6]],
  })
  emit({ s: 'refusals', q: 'good-after', rows: good.rows })
}

const SECTIONS = { types, write, patients, cursor, notify, refusals }

async function main() {
  const wanted = process.argv.slice(2)
  if (wanted.length === 0 || wanted.some((s) => !SECTIONS[s])) {
    console.error(`usage: node compat.js SECTION... (of ${Object.keys(SECTIONS).join(', ')})`)
    process.exit(2)
  }
  const c = await connect()
  try {
    for (const s of wanted) {
      await SECTIONS[s](c)
    }
  } finally {
    await c.end()
  }
}

main().catch((e) => {
  console.error('compat.js failed:', e)
  process.exit(1)
})
