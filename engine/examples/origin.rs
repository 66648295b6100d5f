//! A tiny origin service for trying the cache policies in `policies/` by hand:
//!
//! ```sh
//! cargo run -p patternd --example origin          # listens on 127.0.0.1:9000
//! cargo run -p patternd -- serve                  # in another shell
//! curl -i localhost:8080/v1/cache/catalog/product/42
//! ```
//!
//! It serves JSON documents from memory under `/{collection}/{id}` (`products`, `profiles`,
//! `carts`, anything), accepts PUT (replace) and PATCH (top-level merge), answers 404 for ids
//! it has not seen, tags products with `Cache-Tag: brand:<n>`, and logs every request, so you
//! can watch the cache spare it. Products 1 to 100 and profiles 1 to 10 exist at start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

type Store = Arc<Mutex<HashMap<(String, String), Value>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let mut docs = HashMap::new();
    for i in 1..=100 {
        docs.insert(
            ("products".to_string(), i.to_string()),
            json!({"id": i, "name": format!("Product {i}"), "price_cents": 100 * i, "brand": i % 7}),
        );
    }
    for i in 1..=10 {
        docs.insert(
            ("profiles".to_string(), i.to_string()),
            json!({"id": i, "name": format!("User {i}"), "avatar": format!("/a/{i}.png"), "locale": "en"}),
        );
    }
    let store: Store = Arc::new(Mutex::new(docs));
    let app = Router::new()
        .route("/{collection}/{id}", any(handle))
        .with_state(store);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("origin listening on http://{addr} (GET/PUT/PATCH /{{collection}}/{{id}})");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn handle(
    State(store): State<Store>,
    method: Method,
    Path((collection, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    println!("{method} /{collection}/{id}");
    let key = (collection.clone(), id);
    let mut docs = match store.lock() {
        Ok(d) => d,
        Err(p) => p.into_inner(),
    };
    match method {
        Method::GET => match docs.get(&key) {
            Some(doc) => {
                let mut resp = (
                    [(header::CONTENT_TYPE, "application/json")],
                    doc.to_string(),
                )
                    .into_response();
                if let (Some(brand), true) = (doc.get("brand"), collection == "products")
                    && let Ok(v) = format!("brand:{brand}").parse()
                {
                    resp.headers_mut().insert("cache-tag", v);
                }
                resp
            }
            None => (StatusCode::NOT_FOUND, "no such document").into_response(),
        },
        Method::PUT | Method::PATCH => {
            let Ok(new) = serde_json::from_slice::<Value>(&body) else {
                return (StatusCode::BAD_REQUEST, "the body must be JSON").into_response();
            };
            match (method, docs.get_mut(&key), new) {
                (Method::PATCH, Some(Value::Object(old)), Value::Object(patch)) => {
                    for (k, v) in patch {
                        if v.is_null() {
                            old.remove(&k);
                        } else {
                            old.insert(k, v);
                        }
                    }
                }
                (_, _, new) => {
                    docs.insert(key, new);
                }
            }
            StatusCode::NO_CONTENT.into_response()
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}
