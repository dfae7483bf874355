//! A database that drops connections costs no failed read: a read whose backend is killed under
//! it runs once more on a fresh connection; what still cannot be answered is a 503 with
//! `Retry-After`, never a 500.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use clientapi_sync::simulator::servicem8::SimConfig;
use serde_json::json;

use crate::endpoints::{create_endpoint, head_offices};
use crate::helpers::get_json;

#[tokio::test]
async fn reads_survive_their_database_backends_being_killed_under_load() {
    let (sim, app, token, conn) =
        crate::rest::synced(SimConfig { companies: 2, jobs_per_company: 30, ..SimConfig::default() }).await;
    let office = head_offices(&sim).remove(0);
    let (ep, key) = create_endpoint(&app, &token, conn, &office, json!({})).await;
    let job = get_json(&app, &format!("/api/public/{ep}/jobs?page_size=1"), &key).await;
    let job = job["data"][0]["id"].as_str().unwrap().to_owned();

    // Every 250 ms, every backend of the read path is terminated, whatever it is doing.
    let killed = Arc::new(AtomicI64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let killer = {
        let (db, killed, stop) = (app.db.clone(), killed.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let n: i64 = sqlx::query_scalar(
                    "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity where application_name = $1",
                )
                .bind(clientapi_schema::read::READER_APPLICATION)
                .fetch_one(&db)
                .await
                .unwrap();
                killed.fetch_add(n, Ordering::Relaxed);
            }
        })
    };
    let paths = [
        format!("/api/public/{ep}/jobs?page_size=20"),
        format!("/api/public/{ep}/jobs/{job}"),
        format!("/api/public/{ep}/changes?resource=jobs&page_size=20"),
        format!("/api/public/{ep}/invoices?page_size=20&sort=-updated_at"),
    ];
    let mut workers = Vec::new();
    for w in 0..6 {
        let (client, base, key, paths) = (app.client.clone(), app.url(""), key.clone(), paths.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..80 {
                let path = &paths[(w + i) % paths.len()];
                let status = client.get(format!("{base}{path}")).bearer_auth(&key).send().await.unwrap().status();
                if status != 200 {
                    failures.push(format!("{path}: {status}"));
                }
                if i % 8 != 0 {
                    continue;
                }
                let graphql = client
                    .post(format!("{base}/api/public/{}/graphql", path_endpoint(&paths[0])))
                    .bearer_auth(&key)
                    .json(&json!({"query": "{ jobs(first: 5) { nodes { id client { name } lineItems { id } } } }"}))
                    .send()
                    .await
                    .unwrap();
                let body: serde_json::Value = graphql.json().await.unwrap();
                if body.get("errors").is_some() {
                    failures.push(format!("graphql: {body}"));
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    stop.cancel();
    killer.await.unwrap();
    assert!(killed.load(Ordering::Relaxed) > 0, "the test killed no backend: it proves nothing");
    assert!(failures.is_empty(), "{} reads failed while backends were killed: {failures:?}", failures.len());
}

fn path_endpoint(path: &str) -> &str {
    path.trim_start_matches("/api/public/").split('/').next().unwrap()
}
