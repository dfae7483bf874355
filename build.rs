//! Embeds GraphiQL's assets into the binary, so the GraphiQL page needs no CDN and no internet.
//! They come from the npm registry, pinned by `web/graphiql/package-lock.json`, installed with
//! `npm ci --prefix web/graphiql` (`.ci/run` does, before it builds). A build without them still
//! succeeds, and its GraphiQL page says what to install.

use std::path::{Path, PathBuf};

/// (name served, path under web/graphiql/node_modules)
const ASSETS: [(&str, &str); 4] = [
    ("react.production.min.js", "react/umd/react.production.min.js"),
    ("react-dom.production.min.js", "react-dom/umd/react-dom.production.min.js"),
    ("graphiql.min.js", "graphiql/graphiql.min.js"),
    ("graphiql.min.css", "graphiql/graphiql.min.css"),
];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let modules = root.join("web/graphiql/node_modules");
    println!("cargo:rerun-if-changed=web/graphiql/package-lock.json");
    let found: Vec<(&str, PathBuf)> = ASSETS.iter().map(|(name, path)| (*name, modules.join(path))).collect();
    for (_, path) in &found {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let code = if found.iter().all(|(_, path)| path.is_file()) {
        let entries: Vec<String> = found
            .iter()
            .map(|(name, path)| format!("({name:?}, include_bytes!({:?}) as &[u8])", path.display().to_string()))
            .collect();
        format!("pub const GRAPHIQL_ASSETS: Option<&[(&str, &[u8])]> = Some(&[{}]);\n", entries.join(", "))
    } else {
        println!(
            "cargo:warning=GraphiQL's assets are not installed (npm ci --prefix web/graphiql): this build's GraphiQL page says so"
        );
        "pub const GRAPHIQL_ASSETS: Option<&[(&str, &[u8])]> = None;\n".to_owned()
    };
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("graphiql_assets.rs");
    std::fs::write(out, code).expect("writing graphiql_assets.rs");
}
