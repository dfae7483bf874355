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
