use std::path::Path;

use super::catalog::test_rows::cat_row;
use super::*;

fn load(text: &str) -> Result<Policy, YamlErrors> {
    Policy::from_text(Path::new("p.yaml"), text)
}

fn errs(text: &str) -> Vec<YamlError> {
    load(text).expect_err("policy should be rejected").0
}

/// That `all` contains `part` (else the test fails showing `all`).
#[track_caller]
fn assert_has(all: &str, part: &str) {
    assert!(all.contains(part), "{all}");
}

/// Every error of a rejected policy, one line each.
fn all_errs(text: &str) -> String {
    errs(text)
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn reference_policy_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/calmony.yaml");
    let p = Policy::load(&path).expect("calmony.yaml loads");
    assert_eq!(p.tables.len(), 5);
    let pc = p.table("public", "pay_customers").unwrap();
    assert_eq!(pc.tenant.as_deref(), Some("org_id"));
    let names: Vec<&str> = pc.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "email",
            "name",
            "phone",
            "line1",
            "line2",
            "city",
            "state",
            "postal_code",
            "country"
        ]
    );
    let email = pc.column("email").unwrap();
    assert_eq!(email.ty, PgType::Text);
    let b = email.blind_index.as_ref().unwrap();
    assert_eq!(b.column, "email_bidx");
    assert_eq!(b.normalize, vec![Normalizer::Trim, Normalizer::Lowercase]);
    assert_eq!(b.next, None);
    let mp = p.table("phi", "member_profile").unwrap();
    assert_eq!(mp.column("date_of_birth").unwrap().ty, PgType::Date);
    assert_eq!(mp.column("risk_score").unwrap().ty, PgType::Int4);
    assert_eq!(
        mp.column("ssn")
            .unwrap()
            .blind_index
            .as_ref()
            .unwrap()
            .normalize,
        vec![Normalizer::DigitsOnly]
    );
    assert!(p.table("public", "nope").is_none());
    assert!(email.line.is_some() && pc.line.is_some());
}

#[test]
fn access_resolves_groups_and_unions() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/calmony.yaml");
    let p = Policy::load(&path).unwrap();
    let read = AccessLevel::Read.capabilities();
    assert_eq!(
        p.access("calmony_app", "public", "users", "email"),
        Some(read)
    );
    assert_eq!(
        p.access("calmony_worker", "public", "users", "email"),
        Some(read)
    );
    let w = p.access("signup", "public", "users", "email").unwrap();
    assert!(w.write && !w.search && !w.read_plaintext);
    let s = p
        .access("support_agent", "public", "pay_customers", "email")
        .unwrap();
    assert!(s.write && s.search && !s.read_plaintext);
    assert_eq!(p.access("dba", "public", "users", "email"), None);
    assert_eq!(p.access("calmony_app", "public", "users", "id"), None);
    assert!(
        p.access("intake", "phi", "member_profile", "ssn")
            .unwrap()
            .search
    );

    // Union across a direct entry and a group.
    let text = "version: 1\ngroups:\n  g: [bob]\ntables:\n  public.t:\n    columns:\n      c: { type: text, access: { g: write, bob: search } }\n";
    let p = load(text).unwrap();
    let a = p.access("bob", "public", "t", "c").unwrap();
    assert!(a.write && a.search && !a.read_plaintext);
}

#[test]
fn unknown_keys_types_normalisers_levels_all_reported_with_lines() {
    let text = "\
version: 1
tables:
  public.t:
    colums: {}
  public.u:
    columns:
      a:
        type: money
      b:
        type: text
        blind_index: { column: b_bidx, normalize: [trim, titlecase] }
        access: { app: admin }
      c:
        type: text
        acess: { app: read }
";
    let e = errs(text);
    let msgs: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    let all = msgs.join("\n");
    assert_has(&all, "p.yaml:4: unknown key `colums`");
    assert_has(&all, "did you mean `columns`");
    assert_has(&all, "p.yaml:3: table `public.t` has no `columns:`");
    assert!(
        all.contains("p.yaml:8:") && all.contains("unknown type \"money\""),
        "{all}"
    );
    assert_has(&all, "unknown normaliser \"titlecase\"");
    assert_has(&all, "unknown access level \"admin\"");
    assert_has(&all, "p.yaml:15: unknown key `acess`");
    assert!(e.len() >= 6, "{all}");
}

#[test]
fn duplicates_are_detected_with_the_second_line() {
    let text = "\
version: 1
tables:
  public.t:
    columns:
      a: { type: text }
      a: { type: int4 }
  public.t:
    columns:
      x: { type: text }
";
    let all = all_errs(text);
    assert_has(&all, "p.yaml:6: duplicate key `a`");
    assert_has(&all, "p.yaml:7: duplicate key `public.t`");
    let flow =
        "version: 1\ntables:\n  public.t:\n    columns:\n      a: { type: text, type: int4 }\n";
    let all = all_errs(flow);
    assert_has(&all, "p.yaml:5: duplicate key `type`");
}

#[test]
fn unqualified_table_suggests_public() {
    let all =
        all_errs("version: 1\ntables:\n  users:\n    columns:\n      email: { type: text }\n");
    assert_has(&all, "p.yaml:3: table `users` is not schema-qualified");
    assert_has(&all, "public.users");
}

#[test]
fn cross_column_rules() {
    let text = "\
version: 1
tables:
  public.t:
    tenant: org
    columns:
      org: { type: text }
      a:
        type: text
        blind_index: { column: b }
      b: { type: text }
      c:
        type: text
        blind_index: { column: a_bidx, next: a_bidx }
";
    let all = all_errs(text);
    assert!(
        all.contains("p.yaml:4:") && all.contains("tenant column `org` is itself protected"),
        "{all}"
    );
    assert_has(
        &all,
        "blind-index column `b` of `a` is also a protected column",
    );
    assert_has(&all, "`next` must name a different column");
}

#[test]
fn version_and_shape_errors() {
    let all = errs("version: 2\ntables: {}\n")[0].to_string();
    assert_has(&all, "p.yaml:1: unsupported policy version");
    let all = errs("tables: {}\n")[0].to_string();
    assert_has(&all, "missing `version: 1`");
    let all = errs("version: 1\ngroups:\n  g: alice\ntables: {}\n")[0].to_string();
    assert_has(&all, "p.yaml:3: group `g` must be a list");
    let e = errs("version: 1\ntables: [\n");
    assert!(e[0].line.is_some(), "{:?}", e);
}

#[test]
fn next_blind_index_column_parses() {
    let p = load(
        "version: 1\ntables:\n  public.t:\n    columns:\n      a:\n        type: text\n        blind_index: { column: a_bidx, next: a_bidx2, normalize: [lowercase] }\n",
    )
    .unwrap();
    let t = p.table("public", "t").unwrap();
    assert_eq!(
        t.blind_index_owner("a_bidx2")
            .map(|(c, n)| (c.name.as_str(), n)),
        Some(("a", true))
    );
    assert_eq!(
        t.blind_index_owner("a_bidx")
            .map(|(c, n)| (c.name.as_str(), n)),
        Some(("a", false))
    );
}

#[test]
fn catalog_maps_oids_views_and_problems() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/calmony.yaml");
    let p = Policy::load(&path).unwrap();
    let row =
        |oid: &str, att: &str, s: &str, t: &str, k: &str, c: &str, ty: &str, def: Option<&str>| {
            vec![
                Some(oid.to_string()),
                Some(att.to_string()),
                Some(s.to_string()),
                Some(t.to_string()),
                Some(k.to_string()),
                Some(c.to_string()),
                Some(ty.to_string()),
                def.map(str::to_string),
            ]
        };
    let rows = vec![
        row("100", "1", "public", "users", "r", "id", "bigint", None),
        row("100", "2", "public", "users", "r", "email", "bytea", None),
        row(
            "100",
            "3",
            "public",
            "users",
            "r",
            "email_bidx",
            "bytea",
            None,
        ),
        row("100", "4", "public", "users", "r", "name", "integer", None),
        row(
            "200",
            "1",
            "public",
            "user_emails",
            "v",
            "id",
            "bigint",
            Some(" SELECT u.id,\n    u.email AS mail,\n    lower(u.name) AS n\n   FROM users u;"),
        ),
        row(
            "200",
            "2",
            "public",
            "user_emails",
            "v",
            "mail",
            "bytea",
            None,
        ),
        row("200", "3", "public", "user_emails", "v", "n", "text", None),
        row(
            "300",
            "1",
            "public",
            "v2",
            "v",
            "mail",
            "bytea",
            Some(" SELECT user_emails.mail\n   FROM user_emails;"),
        ),
    ];
    let cat = Catalog::from_rows(&p, rows);
    let a = cat.protected_attr(100, 2).unwrap();
    assert_eq!(a.column.to_string(), "public.users.email");
    assert_eq!(a.storage, crate::crypto::types::Storage::Bytea);
    assert!(cat.protected_attr(100, 1).is_none());
    // `name` is int4 storage: a problem, not mapped.
    assert!(cat.protected_attr(100, 4).is_none());
    assert!(
        cat.problems
            .iter()
            .any(|p| p.contains("public.users.name is integer")),
        "{:?}",
        cat.problems
    );
    assert!(
        cat.problems
            .iter()
            .any(|p| p.contains("public.pay_customers does not exist"))
    );
    assert_eq!(cat.blind_index.get(&(100, 3)).unwrap().column, "email");
    // View column exposing email unchanged, and a view over that view.
    assert_eq!(cat.protected_attr(200, 2).unwrap().column.column, "email");
    assert!(cat.protected_attr(200, 3).is_none());
    assert_eq!(cat.protected_attr(300, 1).unwrap().column.column, "email");
    assert!(cat.names.contains("user_emails") && cat.names.contains("users"));
    let q = Catalog::simple_query(&p);
    assert!(q.contains(&hex::encode("pay_customers")) && q.starts_with("SET LOCAL search_path"));
    // The schema check on the same catalog.
    let text = std::fs::read_to_string(&path).unwrap();
    let probs = check::problems(&p, &text, &cat);
    let all = probs
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert_has(
        &all,
        "ALTER TABLE public.users ALTER COLUMN name TYPE text USING name::text;",
    );
    assert_has(&all, "table public.pay_customers does not exist");
}

#[test]
fn example_policies_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            Policy::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 2);
}

/// The catalog rows of a relation `name` (OID `oid`, kind `kind`) with
/// columns `id` (bigint), `email` and `email_bidx` (bytea); `parents` on
/// its first row.
fn id_email_rows(
    oid: &str,
    name: &str,
    kind: &str,
    parents: Option<&str>,
) -> Vec<Vec<Option<String>>> {
    let mut rows = vec![];
    for (i, c) in ["id", "email", "email_bidx"].iter().enumerate() {
        let att = (i + 1).to_string();
        let ty = if i == 0 { "bigint" } else { "bytea" };
        rows.push(cat_row(
            oid,
            &att,
            name,
            kind,
            c,
            ty,
            None,
            if i == 0 { parents } else { None },
        ));
    }
    rows
}

#[test]
fn catalog_maps_children_and_refuses_unclean_ones() {
    let p = load("version: 1\ntables:\n  public.users:\n    columns:\n      email:\n        type: text\n        blind_index: { column: email_bidx }\n        access: { app: read }\n").unwrap();
    let mut rows = vec![];
    for (oid, name, parents) in [
        ("100", "users", None),
        ("101", "users_inh", Some("{100}")),
        ("102", "users_grand", Some("{101}")),
    ] {
        rows.extend(id_email_rows(oid, name, "r", parents));
    }
    // A child with an extra column.
    for (i, c) in ["id", "email", "email_bidx", "extra"].iter().enumerate() {
        rows.push(cat_row(
            "103",
            &(i + 1).to_string(),
            "users_wide",
            "r",
            c,
            "bytea",
            None,
            (i == 0).then_some("{100}"),
        ));
    }
    let cat = Catalog::from_rows(&p, rows);
    for oid in [101, 102] {
        let a = cat.protected_attr(oid, 2).unwrap();
        assert_eq!(a.column.to_string(), "public.users.email");
        assert_eq!(cat.blind_index.get(&(oid, 3)).unwrap().column, "email");
    }
    assert_eq!(
        cat.children.get(&("public".into(), "users_grand".into())),
        Some(&Ok(("public".to_string(), "users".to_string())))
    );
    let wide = cat
        .children
        .get(&("public".into(), "users_wide".into()))
        .unwrap();
    assert!(
        wide.as_ref()
            .is_err_and(|m| m.contains("add public.users_wide to the policy")),
        "{wide:?}"
    );
    assert!(cat.protected_attr(103, 2).is_none());
    assert!(cat.names.contains("users_grand") && cat.names.contains("users_wide"));
}

#[test]
fn view_columns_that_cannot_be_mapped_are_unknown() {
    let p = load("version: 1\ntables:\n  public.users:\n    columns:\n      email:\n        type: text\n        access: { app: read }\n").unwrap();
    let mut rows = vec![
        cat_row("100", "1", "users", "r", "id", "bigint", None, None),
        cat_row("100", "2", "users", "r", "email", "bytea", None, None),
    ];
    let views = [
        (
            "200",
            "v_union",
            " SELECT users.id,\n    users.email\n   FROM public.users\nUNION ALL\n SELECT users.id,\n    users.email\n   FROM public.users;",
            vec!["id", "email"],
        ),
        (
            "201",
            "v_row",
            " SELECT u.id,\n    u.*::public.users AS r\n   FROM public.users u;",
            vec!["id", "r"],
        ),
        (
            "202",
            "v_expr",
            " SELECT users.id,\n    lower(users.email::text) AS l,\n    users.email\n   FROM public.users;",
            vec!["id", "l", "email"],
        ),
    ];
    for (oid, name, def, cols) in &views {
        for (i, c) in cols.iter().enumerate() {
            rows.push(cat_row(
                oid,
                &(i + 1).to_string(),
                name,
                "v",
                c,
                "text",
                (i == 0).then_some(*def),
                None,
            ));
        }
    }
    let cat = Catalog::from_rows(&p, rows);
    let unknown = |v: &str| -> Vec<String> {
        cat.views[&("public".to_string(), v.to_string())]
            .iter()
            .filter(|c| c.unknown)
            .map(|c| c.name.clone())
            .collect()
    };
    assert_eq!(unknown("v_union"), vec!["id", "email"]);
    // (`u.*::public.users` may not even parse: then every column is unknown.)
    assert!(unknown("v_row").contains(&"r".to_string()));
    assert_eq!(unknown("v_expr"), vec!["l"]);
    // The plain column of v_expr is mapped and decrypts.
    assert_eq!(
        cat.protected_attr(202, 3).unwrap().column.to_string(),
        "public.users.email"
    );
    assert!(cat.protected_attr(202, 2).is_none());
}

#[test]
fn catalog_refuses_parents_of_protected_tables() {
    // public.events is an unprotected partitioned parent of the protected
    // partition public.events_2024 (and has a parent of its own); public.a
    // and its child public.a_1 are both in the policy.
    let p = load("version: 1\ntables:\n  public.events_2024:\n    columns:\n      email:\n        type: text\n        blind_index: { column: email_bidx }\n        access: { app: read }\n  public.a:\n    columns:\n      email: { type: text, access: { app: read } }\n  public.a_1:\n    columns:\n      email: { type: text, access: { app: read } }\n").unwrap();
    let mut rows = vec![];
    for (oid, name, kind, parents) in [
        ("90", "root", "p", None),
        ("100", "events", "p", Some("{90}")),
        ("101", "events_2024", "r", Some("{100}")),
        ("102", "events_2025", "r", Some("{100}")),
        ("200", "a", "r", None),
        ("201", "a_1", "r", Some("{200}")),
    ] {
        rows.extend(id_email_rows(oid, name, kind, parents));
    }
    let cat = Catalog::from_rows(&p, rows);
    for anc in ["events", "root", "a"] {
        let v = cat.children.get(&("public".into(), anc.into()));
        assert!(
            matches!(v, Some(Err(m)) if m.contains(&format!("public.{anc} is a parent of protected table"))),
            "{anc}: {v:?}"
        );
        assert!(cat.names.contains(anc), "{anc} must trigger analysis");
    }
    // A sibling of the protected partition is not related to it.
    assert!(
        !cat.children
            .contains_key(&("public".into(), "events_2025".into()))
    );
    // The policy check reports every refused relative.
    let probs = crate::policy::check::problems(&p, "", &cat);
    for anc in ["public.events", "public.root", "public.a "] {
        assert!(
            probs.iter().any(|x| x.message.contains(anc)),
            "{anc}: {probs:?}"
        );
    }
}
