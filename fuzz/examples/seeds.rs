//! Writes the committed seed corpus: `fuzz/corpus/<target>/seed-<name>`.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! Seeds are realistic sessions (see `fuzz/src/lib.rs` for the layouts):
//! the fuzzer mutates from there. Files libFuzzer adds to the corpus
//! directories are named by hash and ignored by git.

use std::path::Path;

use bytes::{BufMut, BytesMut};
use pgveil::wire::query::{
    BindMsg, ParseMsg, encode_binary_array, encode_describe, encode_execute,
};
use pgveil::wire::result::{
    Field, encode_data_row, encode_parameter_description, encode_row_description,
};
use pgveil::wire::{auth, error, startup, status};

// Control-byte bits shared by the three targets.
const VARIANT: u8 = 0x08;
const BIT4: u8 = 0x10; // frontend: startup first; backend: catalog reload; analyzer: extended
fn role(name: &str) -> u8 {
    pgveil_fuzz::ROLES
        .iter()
        .position(|r| *r == name)
        .expect("role") as u8
}
fn chunk(i: u8) -> u8 {
    i << 5
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}
fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}
fn query(sql: &str) -> Vec<u8> {
    frame(b'Q', &cstr(sql))
}
fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = BytesMut::new();
    ParseMsg {
        name: name.into(),
        query: sql.into(),
        param_types: types.to_vec(),
    }
    .encode(&mut b);
    b.to_vec()
}
fn bind(stmt: &str, formats: &[i16], params: &[Option<&[u8]>], results: &[i16]) -> Vec<u8> {
    let mut b = BytesMut::new();
    BindMsg {
        portal: String::new(),
        statement: stmt.into(),
        param_formats: formats.to_vec(),
        params: params
            .iter()
            .map(|p| p.map(bytes::Bytes::copy_from_slice))
            .collect(),
        result_formats: results.to_vec(),
    }
    .encode(&mut b);
    b.to_vec()
}
fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_describe(&mut b, kind, name);
    b.to_vec()
}
fn execute() -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_execute(&mut b, "", 0);
    b.to_vec()
}
fn sync() -> Vec<u8> {
    frame(b'S', b"")
}
fn terminate() -> Vec<u8> {
    frame(b'X', b"")
}
fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A structurally valid envelope (docs/crypto.md §2) for `plaintext_len`
/// bytes of plaintext, with an optional tenant.
fn envelope(tenant: &str, plaintext_len: usize) -> Vec<u8> {
    let mut e = b"pv\x01".to_vec();
    e.extend_from_slice(&1u32.to_be_bytes());
    e.extend_from_slice(&1u32.to_be_bytes());
    e.push(tenant.len() as u8);
    e.extend_from_slice(tenant.as_bytes());
    e.extend_from_slice(&[0xc3; 12]);
    e.extend_from_slice(&(plaintext_len as u32).to_be_bytes());
    e.extend(std::iter::repeat_n(0x5a, plaintext_len + 16));
    e
}

fn field(name: &str, table: u32, attnum: i16, ty: u32, format: i16) -> Field {
    Field {
        name: name.into(),
        table_oid: table,
        attnum,
        type_oid: ty,
        type_len: -1,
        type_mod: -1,
        format,
    }
}
fn row_description(fields: &[Field]) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_row_description(&mut b, fields);
    b.to_vec()
}
fn data_row(cols: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = BytesMut::new();
    let cols: Vec<_> = cols
        .iter()
        .map(|c| c.map(bytes::Bytes::copy_from_slice))
        .collect();
    encode_data_row(&mut b, &cols);
    b.to_vec()
}
fn command_complete(tag: &str) -> Vec<u8> {
    frame(b'C', &cstr(tag))
}
fn ready(status: u8) -> Vec<u8> {
    status::ready_for_query(status).to_vec()
}
fn hex_bytea(b: &[u8]) -> Vec<u8> {
    format!("\\x{}", hex(b)).into_bytes()
}
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Unpadded base64url (the `text` storage of an envelope).
fn base64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | (x as u32) << (16 - 8 * i));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn backend_input(ctl: u8, client: &[u8], server: &[u8]) -> Vec<u8> {
    let mut v = vec![ctl];
    v.extend_from_slice(&(client.len() as u16).to_be_bytes());
    v.extend_from_slice(client);
    v.extend_from_slice(server);
    v
}

fn frontend_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let app = role("calmony_app");
    let mut startup = BytesMut::new();
    startup.put_slice(&startup::ssl_request());
    startup.put_slice(
        &startup::Startup {
            version: startup::PROTOCOL_V3,
            params: vec![
                ("user".into(), "calmony_app".into()),
                ("database".into(), "app".into()),
            ],
        }
        .encode(),
    );
    let sasl = cat(&[
        auth::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL").to_vec(),
        frame(
            b'p',
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        ),
    ]);
    let array = encode_binary_array(
        25,
        &[
            Some(b"a@example.com".to_vec()),
            None,
            Some(b"B@x.org ".to_vec()),
        ],
    );
    vec![
        (
            "simple-select",
            cat(&[
                vec![app],
                query("select id, email, name from users where email = ' Alice@Example.com'"),
                terminate(),
            ]),
        ),
        (
            "startup-ssl-then-query",
            cat(&[
                vec![app | BIT4],
                startup.to_vec(),
                query("select name from users where email in ('a', 'b'); select 1"),
            ]),
        ),
        (
            "startup-sasl",
            cat(&[vec![app | BIT4], startup.to_vec(), sasl]),
        ),
        (
            "extended-insert-text",
            cat(&[
                vec![app],
                parse(
                    "s1",
                    "insert into users (email, name) values ($1, $2) returning id",
                    &[25, 25],
                ),
                bind("s1", &[0], &[Some(b"a@b.c"), Some(b"Al")], &[1]),
                describe(b'P', ""),
                execute(),
                sync(),
                terminate(),
            ]),
        ),
        (
            "extended-lookup-any-array",
            cat(&[
                vec![app | chunk(2)],
                parse(
                    "",
                    "select id, name from users where email = any($1)",
                    &[1009],
                ),
                bind("", &[1], &[Some(&array)], &[0]),
                describe(b'P', ""),
                execute(),
                sync(),
            ]),
        ),
        (
            "tenant-insert-binary",
            cat(&[
                vec![app | chunk(5)],
                parse(
                    "",
                    "insert into pay_customers (org_id, email, postal_code) values ($1, $2, $3)",
                    &[20, 0, 0],
                ),
                bind(
                    "",
                    &[1, 0, 0],
                    &[Some(&42i64.to_be_bytes()), Some(b"x@y.z"), Some(b"ab1 2cd")],
                    &[],
                ),
                execute(),
                sync(),
            ]),
        ),
        (
            "copy-in-text-and-csv",
            cat(&[
                vec![app],
                query("copy pay_customers (org_id, email, name) from stdin"),
                frame(b'd', b"7\ta@b.c\tAnn\n8\t\\N\tBob\\tby\n"),
                frame(b'c', b""),
                query("copy users (email, name) from stdin with (format csv, header true)"),
                frame(b'd', b"email,name\n\"a,b@c\",\"x \"\"y\"\"\"\n"),
                frame(b'f', &cstr("client gave up")),
            ]),
        ),
        (
            "refusal-then-pipeline",
            cat(&[
                vec![app],
                parse("", "select * from users order by email", &[]),
                bind("", &[], &[], &[]),
                execute(),
                parse("", "select 1", &[]),
                frame(b'H', b""),
                sync(),
                frame(b'C', b"Ss1\0"),
                describe(b'S', "s1"),
                frame(b'F', &[0, 0, 0, 1, 0, 0, 0, 0, 0, 1]),
            ]),
        ),
        (
            "intake-search-ssn",
            cat(&[
                vec![role("intake") | chunk(1)],
                query("select id from phi.member_profile where ssn = '123-45-6789'"),
                parse(
                    "",
                    "update phi.member_profile set note = 'x' where ssn = $1",
                    &[],
                ),
                bind("", &[], &[Some(b"123456789")], &[]),
                execute(),
                sync(),
            ]),
        ),
        (
            "variant-every-type-text",
            cat(&[
                vec![role("v_writer") | VARIANT],
                parse(
                    "",
                    "insert into vault (org, t, vc, i2, i4, i8, n, b, d, ts, tz, u, j, by, note) \
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                    &[],
                ),
                bind(
                    "",
                    &[0],
                    &[
                        Some(b"acme"),
                        Some(b"Hello"),
                        Some(b"v"),
                        Some(b"-2"),
                        Some(b"40"),
                        Some(b"9000000000"),
                        Some(b"1.50e1"),
                        Some(b"yes"),
                        Some(b"2024-02-29"),
                        Some(b"2024-02-29 12:00:00.5"),
                        Some(b"2024-02-29 12:00:00+05:30"),
                        Some(b"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
                        Some(br#"{"b": [1, 2.50, "x"], "a": null}"#),
                        Some(b"\\x0001ff"),
                        None,
                    ],
                    &[],
                ),
                execute(),
                sync(),
            ]),
        ),
        (
            "variant-literals-and-update",
            cat(&[
                vec![role("calmony_app") | VARIANT | chunk(3)],
                query(
                    "insert into vault (org, t, i4, d, u, by) values ('o1', ' Mixed ', 7, \
                     'infinity', 'A0EEBC999C0B4EF8BB6D6BB9BD380A11', 'ab\\\\c\\001'); \
                     update vault set t = 'n', note = NULL where org = 'o1' and i4 = 7; \
                     select * from vault_view where t in ('a', 'b') and u = any(array['x'])",
                ),
            ]),
        ),
        (
            "variant-binary-lookups",
            cat(&[
                vec![role("v_search") | VARIANT],
                parse(
                    "",
                    "select id, t from vault where i4 = $1 or d = $2 or by = $3",
                    &[23, 1082, 17],
                ),
                bind(
                    "",
                    &[1],
                    &[
                        Some(&7i32.to_be_bytes()),
                        Some(&(-1i32).to_be_bytes()),
                        Some(b"\x00\xff"),
                    ],
                    &[1],
                ),
                describe(b'P', ""),
                execute(),
                sync(),
            ]),
        ),
    ]
}

fn backend_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let app = role("calmony_app");
    let env = envelope("", 5);
    let env_t = envelope("42", 9);
    let users = [
        field("id", 16400, 1, 20, 0),
        field("email", 16400, 2, 17, 0),
        field("name", 16400, 4, 25, 0),
    ];
    let catalog_fields: Vec<Field> = [
        "oid",
        "attnum",
        "nspname",
        "relname",
        "relkind",
        "attname",
        "format_type",
        "pg_get_viewdef",
    ]
    .iter()
    .map(|n| field(n, 0, 0, 25, 0))
    .collect();
    let cat_row = |cols: [&str; 7], def: Option<&str>| {
        let mut v: Vec<Option<&[u8]>> = cols.iter().map(|c| Some(c.as_bytes())).collect();
        v.push(def.map(str::as_bytes));
        data_row(&v)
    };
    let name_text = format!("pgv1:{}", base64url(&envelope("", 3)));
    let mut param_desc = BytesMut::new();
    encode_parameter_description(&mut param_desc, &[17, 17]);
    vec![
        (
            "simple-select-decrypt",
            backend_input(
                app,
                &query("select id, email, name from users"),
                &cat(&[
                    row_description(&users),
                    data_row(&[
                        Some(b"1"),
                        Some(&hex_bytea(&env)),
                        Some(name_text.as_bytes()),
                    ]),
                    data_row(&[Some(b"2"), None, None]),
                    command_complete("SELECT 2"),
                    ready(b'I'),
                ]),
            ),
        ),
        (
            "extended-binary-row",
            backend_input(
                app | chunk(2),
                &cat(&[
                    parse("s", "select id, email from users where email = $1", &[]),
                    describe(b'S', "s"),
                    bind("s", &[], &[Some(b"a@b.c")], &[1]),
                    execute(),
                    sync(),
                ]),
                &cat(&[
                    frame(b'1', b""),
                    param_desc.to_vec(),
                    row_description(&[
                        field("id", 16400, 1, 20, 0),
                        field("email", 16400, 2, 17, 0),
                    ]),
                    frame(b'2', b""),
                    row_description(&[
                        field("id", 16400, 1, 20, 1),
                        field("email", 16400, 2, 17, 1),
                    ]),
                    data_row(&[Some(&1i64.to_be_bytes()), Some(&env)]),
                    command_complete("SELECT 1"),
                    ready(b'T'),
                ]),
            ),
        ),
        (
            "tenant-row-and-error",
            backend_input(
                app | chunk(1),
                &query("select org_id, email from pay_customers; select 1/0"),
                &cat(&[
                    row_description(&[
                        field("org_id", 16410, 2, 20, 0),
                        field("email", 16410, 3, 17, 0),
                    ]),
                    data_row(&[Some(b"42"), Some(&hex_bytea(&env_t))]),
                    command_complete("SELECT 1"),
                    error::error_response_with("ERROR", "22012", "division by zero", Some("hint"))
                        .to_vec(),
                    ready(b'I'),
                ]),
            ),
        ),
        (
            "auth-scram",
            backend_input(
                app,
                &[],
                &cat(&[
                    auth::auth_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]).to_vec(),
                    auth::authentication(
                        auth::AUTH_SASL_CONTINUE,
                        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
                    )
                    .to_vec(),
                    auth::authentication(auth::AUTH_SASL_FINAL, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
                        .to_vec(),
                    auth::authentication(auth::AUTH_OK, b"").to_vec(),
                    frame(b'S', b"server_version\x0015.18\x00"),
                    status::backend_key_data(7, 9).to_vec(),
                    frame(b'N', b"SNOTICE\x00VNOTICE\x00C00000\x00Mhello\x00\x00"),
                    ready(b'I'),
                ]),
            ),
        ),
        (
            "catalog-reload",
            backend_input(
                app | BIT4,
                &query("select name from people"),
                &cat(&[
                    row_description(&catalog_fields),
                    cat_row(["16400", "1", "public", "users", "r", "id", "bigint"], None),
                    cat_row(
                        ["16400", "2", "public", "users", "r", "email", "bytea"],
                        None,
                    ),
                    cat_row(
                        ["16400", "3", "public", "users", "r", "email_bidx", "bytea"],
                        None,
                    ),
                    cat_row(["16400", "4", "public", "users", "r", "name", "text"], None),
                    cat_row(
                        ["16450", "1", "public", "people", "v", "email", "bytea"],
                        Some(" SELECT users.email,\n    users.name\n   FROM users;"),
                    ),
                    cat_row(
                        ["16450", "2", "public", "people", "v", "name", "text"],
                        None,
                    ),
                    command_complete("SELECT 6"),
                    ready(b'I'),
                    row_description(&[field("name", 16450, 2, 25, 0)]),
                    data_row(&[Some(name_text.as_bytes())]),
                    command_complete("SELECT 1"),
                    ready(b'I'),
                ]),
            ),
        ),
        (
            "copy-out-and-in",
            backend_input(
                app,
                &cat(&[
                    query("copy users (id, email) to stdout"),
                    query("copy users (email) from stdin"),
                ]),
                &cat(&[
                    frame(b'H', &[0, 0, 2, 0, 0, 0, 0]),
                    frame(
                        b'd',
                        format!("1\t{}\n", String::from_utf8_lossy(&hex_bytea(&env))).as_bytes(),
                    ),
                    frame(b'c', b""),
                    command_complete("COPY 1"),
                    ready(b'I'),
                    frame(b'G', &[0, 0, 1, 0, 0]),
                    command_complete("COPY 0"),
                    ready(b'I'),
                ]),
            ),
        ),
        (
            "variant-every-type-binary",
            backend_input(
                role("v_writer") | VARIANT | chunk(4),
                &cat(&[
                    parse("", "select org, t, i4, d, u, j, note from vault", &[]),
                    bind("", &[], &[], &[1, 1, 1, 1, 1, 1, 0]),
                    describe(b'P', ""),
                    execute(),
                    sync(),
                ]),
                &cat(&[
                    frame(b'2', b""),
                    row_description(&[
                        field("org", 20000, 2, 25, 1),
                        field("t", 20000, 3, 17, 1),
                        field("i4", 20000, 8, 17, 1),
                        field("d", 20000, 13, 17, 1),
                        field("u", 20000, 17, 17, 1),
                        field("j", 20000, 19, 17, 1),
                        field("note", 20000, 22, 25, 0),
                    ]),
                    data_row(&[
                        Some(b"acme"),
                        Some(&envelope("acme", 5)),
                        Some(&envelope("acme", 8)),
                        Some(&envelope("acme", 4)),
                        None,
                        Some(&envelope("acme", 12)),
                        Some(name_text.as_bytes()),
                    ]),
                    frame(b's', b""),
                    frame(b'I', b""),
                    command_complete("SELECT 1"),
                    ready(b'E'),
                ]),
            ),
        ),
        (
            "ddl-invalidates",
            backend_input(
                app,
                &query("alter table users add column x int; select 1"),
                &cat(&[
                    command_complete("ALTER TABLE"),
                    row_description(&[field("?column?", 0, 0, 23, 0)]),
                    data_row(&[Some(b"1")]),
                    command_complete("SELECT 1"),
                    ready(b'I'),
                ]),
            ),
        ),
    ]
}

fn analyzer_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let app = role("calmony_app");
    let sql = |ctl: u8, types: &[u8], text: &str| {
        let mut v = vec![ctl | ((types.len() as u8) << 5)];
        v.extend_from_slice(types);
        v.extend_from_slice(text.as_bytes());
        v
    };
    // Type codes index `PARAM_TYPES` in fuzz/src/lib.rs (1 text, 2 int4,
    // 3 int8, 6 date, 9 uuid, 14 text[]).
    vec![
        (
            "select-join-cte",
            sql(
                app,
                &[],
                "with c as (select id, email from users where email = 'a@b.c') select c.email, p.name from c join pay_customers p on p.id = c.id union all select email, name from users where id in (select customer_id from pay_payment_methods)",
            ),
        ),
        (
            "lookups",
            sql(
                app | BIT4,
                &[1, 14],
                "select * from users u where u.email = $1 or u.email = any($2) or u.email in ('x', 'y') or u.email is null",
            ),
        ),
        (
            "insert-multi-returning",
            sql(
                app,
                &[],
                "insert into users (email, name, plan) values ('a', 'A', 'pro'), (NULL, DEFAULT, 'free') returning id, email",
            ),
        ),
        (
            "insert-no-columns",
            sql(
                app | BIT4,
                &[3, 1, 1, 1],
                "insert into users values ($1, $2, NULL, $3, $4)",
            ),
        ),
        (
            "on-conflict",
            sql(
                app,
                &[],
                "insert into users (email) values ('a') on conflict (email) do update set email = excluded.email, name = excluded.name",
            ),
        ),
        (
            "tenant-update",
            sql(
                app | BIT4,
                &[1, 3],
                "update pay_customers set email = $1, postal_code = 'AB1 2CD' where org_id = $2 and email = 'old@x'",
            ),
        ),
        (
            "delete-exists",
            sql(
                app,
                &[],
                "delete from users where exists (select 1 from pay_customers c where c.email = 'q') and email <> 'z'",
            ),
        ),
        (
            "copy",
            sql(
                app,
                &[],
                "copy pay_customers (org_id, email, name) from stdin with (format csv, delimiter ';', null 'NULL', header)",
            ),
        ),
        (
            "copy-to",
            sql(
                app,
                &[],
                "copy (select email from users) to stdout; copy users to stdout (format binary)",
            ),
        ),
        (
            "rejected-order-like",
            sql(
                app,
                &[],
                "select * from users where email like '%@x' order by name, email desc limit 3",
            ),
        ),
        (
            "rejected-expr",
            sql(
                app,
                &[],
                "select lower(email), count(distinct name), email || 'x' from users group by email",
            ),
        ),
        (
            "do-and-prepare",
            sql(
                app,
                &[],
                "do $$ begin insert into users (email) values ('x'); end $$; prepare p as select * from users; execute p",
            ),
        ),
        (
            "ddl",
            sql(
                app,
                &[],
                "create index on users (email_bidx); alter table users add column z int; grant select on users to dba; truncate pay_customers",
            ),
        ),
        (
            "view",
            sql(
                app,
                &[],
                "select email, plan from people where email = 'a' and plan = 'pro'",
            ),
        ),
        (
            "search-role",
            sql(
                role("intake") | BIT4,
                &[1],
                "select id, legal_name from phi.member_profile where ssn = $1",
            ),
        ),
        (
            "write-role",
            sql(
                role("signup"),
                &[],
                "insert into users (email) values ('s@x'); select * from users where email = 'a'",
            ),
        ),
        (
            "none-role-envelope",
            sql(
                role("dba") | BIT4,
                &[0],
                "update users set email = $1 where id = 1",
            ),
        ),
        (
            "quoted-unicode",
            sql(
                app,
                &[],
                "select * from \"USERS\"; select * from U&\"\\0075sers\"; select * from public.\"users\" as \"U\" where \"U\".\"email\" = E'\\x41'",
            ),
        ),
        (
            "cursor-explain",
            sql(
                app,
                &[],
                "declare c cursor for select email from users where email = 'a'; explain analyze select * from users where email = 'a'",
            ),
        ),
        (
            "variant-types",
            sql(
                role("v_writer") | VARIANT | BIT4,
                &[1, 1, 2, 6, 9],
                "insert into vault (org, t, i4, d, u, n, j, tz) values ($1, $2, $3, $4, $5, 1.5e2, '{\"a\": 1}', '2024-01-01 00:00:00+00')",
            ),
        ),
        (
            "variant-rotation",
            sql(
                role("calmony_app") | VARIANT,
                &[],
                "update vault set t = 'x' where org = 'acme' and t = 'y'; select * from vault_view where i4 = 3",
            ),
        ),
        (
            "variant-search",
            sql(
                role("v_search") | VARIANT | BIT4,
                &[2, 9],
                "select id from vault where i4 = $1 and u = $2 and t is not null",
            ),
        ),
        (
            "whole-row-and-only",
            sql(
                role("signup"),
                &[],
                "select to_jsonb(u) ->> 'email_bidx', u.row_to_json, (u).email from users u where u = u; update only users set email = 'x'; select s.c from (select * from users) s(a, b, c) order by 3",
            ),
        ),
        (
            "lateral-xml-schema",
            sql(
                role("dba"),
                &[],
                "select g from users u, generate_series(1, case when u.name = 'x' then 1 else 0 end) g union all select query_to_xml('select 1', false, false, '')::text::int; alter schema public rename to p2",
            ),
        ),
        (
            "merge-call",
            sql(
                app,
                &[],
                "merge into users u using (select 1 id) s on u.id = s.id when matched then update set email = 'x'; call f(); select * from users for update",
            ),
        ),
    ]
}

fn write(target: &str, seeds: Vec<(&str, Vec<u8>)>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    }
}

fn main() {
    write("frontend", frontend_seeds());
    write("backend", backend_seeds());
    write("analyzer", analyzer_seeds());
}
