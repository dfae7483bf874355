use clientapi_schema::db;

use crate::helpers::{clientapi, database_target, fresh_database};

#[tokio::test]
async fn migrations_are_idempotent_and_create_the_foundation_tables_and_reader_role() {
    let name = fresh_database().await;
    let (options, url) = database_target(&name);
    let pool = db::connect(options).await.unwrap();
    db::migrate(&pool).await.expect("second run is a no-op");
    db::migrate(&pool).await.expect("third run is a no-op");

    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations").fetch_one(&pool).await.unwrap();
    assert_eq!(applied as usize, db::MIGRATOR.iter().count());
    for table in ["accounts", "users", "sessions", "admin_tokens"] {
        let exists: bool =
            sqlx::query_scalar("select to_regclass($1) is not null").bind(table).fetch_one(&pool).await.unwrap();
        assert!(exists, "table {table} missing");
    }
    let role: bool = sqlx::query_scalar(
        "select exists (select 1 from pg_roles where rolname = 'clientapi_reader' and not rolcanlogin)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(role, "the RLS reader role is missing");

    // The CLI applies them too, and twice is fine.
    for _ in 0..2 {
        let out = clientapi(&["migrate"], &[("DATABASE_URL", &url)]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The mirror can be distributed by company (Citus `create_distributed_table(t, 'company_id')`,
/// DESIGN.md §3), checked over the catalog so a table or index added later is held to it too.
#[tokio::test]
async fn the_mirror_stays_shardable_by_company_in_the_catalog() {
    use clientapi_schema::model::Resource;
    let name = fresh_database().await;
    let (options, _) = database_target(&name);
    let pool = db::connect(options).await.unwrap();
    db::migrate(&pool).await.unwrap();

    // Every resource's table, and every other table holding company_id rows, is partitioned by it.
    let partitioned: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_partitioned_table p join pg_class c on c.oid = p.partrelid
         join pg_attribute a on a.attrelid = c.oid and a.attnum = p.partattrs[0]
         where a.attname = 'company_id' and c.relnamespace = 'public'::regnamespace order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut tables: Vec<String> = Resource::ALL.iter().map(|r| r.plural().to_owned()).collect();
    tables.sort();
    assert_eq!(partitioned, tables, "every mirror table is partitioned by company_id");
    // Tables with a company_id that are not the mirror, each with why it is not distributed.
    let others: Vec<String> = sqlx::query_scalar(
        "select distinct c.relname::text from pg_attribute a join pg_class c on c.oid = a.attrelid
         where a.attname = 'company_id' and c.relkind in ('r', 'p') and not c.relispartition
           and c.relnamespace = 'public'::regnamespace and c.relname <> all($1) order by 1",
    )
    .bind(&tables)
    .fetch_all(&pool)
    .await
    .unwrap();
    let explained = [
        // The registry of where each record lives now, keyed by connection: it is how a record
        // moving between companies is found, so it spans companies by design (a Citus
        // reference table, or local to the coordinator).
        "mirror_keys",
        // An endpoint names its company; endpoints are few, per account, read on every request
        // by key: a reference table beside the distributed mirror.
        "endpoints",
        // Customer webhooks: every key leads with company_id, and the outbox rows are written in
        // the same transaction as their company's mirror rows. Small and short-lived (7 days):
        // distributed by company_id and co-located with the mirror, not partitioned.
        "webhook_subscriptions",
        "webhook_deliveries",
        "webhook_attempts",
    ];
    for table in ["webhook_subscriptions", "webhook_deliveries", "webhook_attempts"] {
        let keys: Vec<(String, bool)> = sqlx::query_as(
            "select con.conname::text, con.conkey[1] = (select attnum from pg_attribute where attrelid = con.conrelid and attname = 'company_id')
             from pg_constraint con where con.conrelid = $1::regclass
               and (con.contype = 'p' or (con.contype = 'f' and con.confrelid = 'webhook_subscriptions'::regclass))",
        )
        .bind(table)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(!keys.is_empty());
        for (key, leads) in keys {
            assert!(leads, "{table}.{key} does not lead with company_id");
        }
    }
    for table in &others {
        assert!(explained.contains(&table.as_str()), "{table} has company_id rows but is neither mirror nor explained");
    }

    for table in &tables {
        let relation = format!("public.{table}");
        // Primary keys, unique constraints and foreign keys include company_id (from and to).
        let constraints: Vec<(String, String, bool)> = sqlx::query_as(
            "select con.conname::text, con.contype::text,
                    (select attnum from pg_attribute where attrelid = con.conrelid and attname = 'company_id') = any(con.conkey)
             from pg_constraint con where con.conrelid = $1::regclass and con.contype in ('p', 'u', 'f')
             union all
             select con.conname::text, 'referenced', (select attnum from pg_attribute where attrelid = con.confrelid and attname = 'company_id') = any(con.confkey)
             from pg_constraint con where con.confrelid = $1::regclass and con.contype = 'f'",
        )
        .bind(&relation)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(constraints.iter().any(|c| c.1 == "p"), "{table} has a primary key");
        for (constraint, kind, includes) in &constraints {
            assert!(includes, "{table}.{constraint} ({kind}) does not include company_id");
        }
        // Every index, on the table and on each partition, leads with company_id.
        let indexes: Vec<(String, bool)> = sqlx::query_as(
            "select i.indexrelid::regclass::text,
                    i.indkey[0] = (select attnum from pg_attribute where attrelid = i.indrelid and attname = 'company_id')
             from pg_index i
             where i.indrelid = $1::regclass or i.indrelid in (select inhrelid from pg_inherits where inhparent = $1::regclass)",
        )
        .bind(&relation)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(indexes.len() >= 9, "{table}: its indexes and its partitions' are seen ({})", indexes.len());
        for (index, leads) in &indexes {
            assert!(leads, "{index} does not lead with company_id");
        }
        // Reads are confined to one company by row-level security, so no public read can join
        // rows of two companies whatever the query.
        let (rls, policy): (bool, Option<String>) = sqlx::query_as(
            "select c.relrowsecurity, (select pg_get_expr(p.polqual, p.polrelid) from pg_policy p where p.polrelid = c.oid)
             from pg_class c where c.oid = $1::regclass",
        )
        .bind(&relation)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(rls && policy.as_deref().is_some_and(|p| p.contains("clientapi.company_id")), "{table}: {policy:?}");
        // No trigger assumes one node.
        let triggers: i64 =
            sqlx::query_scalar("select count(*) from pg_trigger where tgrelid = $1::regclass and not tgisinternal")
                .bind(&relation)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(triggers, 0, "{table} has a trigger: list it here with why it holds on many nodes");
        // The one sequence: change_seq's default. Under Citus each node draws its own range of a
        // bigint sequence; a company lives on one node, so its changes feed still only climbs.
        let sequences: Vec<String> = sqlx::query_scalar(
            "select pg_get_expr(d.adbin, d.adrelid) from pg_attrdef d where d.adrelid = $1::regclass
             and pg_get_expr(d.adbin, d.adrelid) like 'nextval%'",
        )
        .bind(&relation)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(sequences, vec!["nextval('mirror_change_seq'::regclass)".to_owned()], "{table}");
    }
}

/// The site rule's migration brings a mirror written before it to the rule: what an older sync
/// mirrored under a site's own company (a contact or job naming the site) moves to the company
/// the site lives in, with its job's records, nothing lost; the sites it holds among its clients
/// are listed as sites. Run on the SQL itself: every migration before it, old-shape rows, then it.
#[tokio::test]
async fn the_site_rule_migration_moves_records_from_a_sites_own_company_to_its_head_office() {
    const RULE: &str = "20261202000012";
    // An empty database (not the migrated template).
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let (maintenance, _) = database_target("postgres");
    db::ensure_database(&maintenance, &name, None).await.unwrap();
    let (options, _) = database_target(&name);
    let pool = db::connect(options).await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let (before, rest): (Vec<_>, Vec<_>) =
        files.into_iter().partition(|f| f.file_name().unwrap().to_string_lossy().as_ref() < RULE);
    let (rule, later): (Vec<_>, Vec<_>) =
        rest.into_iter().partition(|f| f.file_name().unwrap().to_string_lossy().starts_with(RULE));
    for file in &before {
        sqlx::raw_sql(sqlx::AssertSqlSafe(std::fs::read_to_string(file).unwrap())).execute(&pool).await.unwrap();
    }
    // A head office (company 1) with a site whose client row lives with it, and what an older sync
    // put under the site's own company (2): a contact, a job, its line item.
    sqlx::raw_sql(
        "insert into accounts (name) values ('acme');
         insert into connections (account_id, provider, external_account_id) values (1, 'servicem8', 'v');
         insert into companies (connection_id, external_id) values (1, 'hq'), (1, 'site');
         insert into clients (company_id, external_id, name, parent_id, remote_data, change_seq)
             values (1, 'hq', 'HQ', null, '{}', 1), (1, 'site', 'Depot', 'hq', '{}', 2);
         insert into contacts (company_id, external_id, client_id, remote_data, change_seq) values (2, 'c1', 'site', '{}', 3);
         insert into jobs (company_id, external_id, client_id, remote_data, change_seq) values (2, 'j1', 'site', '{}', 4);
         insert into line_items (company_id, external_id, job_id, remote_data, change_seq) values (2, 'l1', 'j1', '{}', 5);
         insert into mirror_keys values (1, 'client', 'hq', 1), (1, 'client', 'site', 1), (1, 'contact', 'c1', 2),
                                        (1, 'job', 'j1', 2), (1, 'line_item', 'l1', 2);
         select setval('mirror_change_seq', 5);",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(rule.len(), 1, "the rule's migration");
    sqlx::raw_sql(sqlx::AssertSqlSafe(std::fs::read_to_string(&rule[0]).unwrap())).execute(&pool).await.unwrap();
    // The migrations after it apply on top of what it left.
    for file in &later {
        sqlx::raw_sql(sqlx::AssertSqlSafe(std::fs::read_to_string(file).unwrap())).execute(&pool).await.unwrap();
    }

    for table in ["contacts", "jobs", "line_items"] {
        let companies: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select company_id from {table}")))
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(companies, [1], "{table} moved to the head office's company, once");
    }
    let keys: Vec<(String, i64)> =
        sqlx::query_as("select resource, company_id from mirror_keys order by resource, external_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(keys.iter().all(|(_, company)| *company == 1), "{keys:?}");
    assert!(keys.contains(&("site".into(), 1)), "the site is registered as a site: {keys:?}");
    let sites: Vec<(String, Option<String>, String)> =
        sqlx::query_as("select external_id, client_id, name from sites").fetch_all(&pool).await.unwrap();
    assert_eq!(sites, [("site".into(), Some("hq".into()), "Depot".into())]);
    let bumped: i64 =
        sqlx::query_scalar("select count(*) from contacts where change_seq > 5").fetch_one(&pool).await.unwrap();
    assert_eq!(bumped, 1, "a moved record is a change in the feed");
}
