//! A bare HTTP server on the same stack as modelship (tokio, hyper-util's accept loop through
//! `modelship_server::Server`, axum) that reads the request
//! body and answers a fixed JSON body: the cost of one loopback HTTP round trip, with no
//! decoding and no inference. Used by bench/run.sh as the other half of the latency floor.
//!
//!   cargo run --release -p modelship-server --example loopback -- PORT

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

// The modelship binary's allocator, so the floor and the server allocate alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ANSWER: &str = r#"{"model_name":"fraud","model_version":"1","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[0]},{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[0.9,0.1]}]}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let app = Router::new().fallback(post(|body: Bytes| async move {
        std::hint::black_box(body);
        ([("content-type", "application/json")], ANSWER)
    }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("{}", listener.local_addr()?);
    let drain = modelship_server::Drain { delay: std::time::Duration::ZERO, grace: std::time::Duration::from_secs(1) };
    let health = std::sync::Arc::new(modelship_server::health::Health::default());
    let mut server = modelship_server::Server::new(health, Default::default(), drain, Default::default());
    server.serve("http", listener, app, None);
    server.run_until(std::future::pending()).await;
    Ok(())
}
