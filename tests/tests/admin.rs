//! The admin endpoint cannot be tied up or bypassed: clients that connect
//! and send nothing are closed after the header-read timeout and cannot
//! take every connection slot for long, a scrape still answers while they
//! hang on, the pipeline's throughput holds, and `POST /reload` on a
//! non-loopback address without a token is refused.

use std::io::Read as _;
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pipeline_tests::{
    broker_with_topic, count, eventually, free_port, generate, http, log_file, pipeline,
    plugin_args, sigterm, wait_admin, wait_count, wait_exit,
};

/// Opens `n` connections to the admin endpoint that send nothing.
fn idle_clients(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_do_not_tie_up_the_admin_endpoint() {
    let (_broker, bootstrap, client) = broker_with_topic("in", 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let (log_path, log_out) = log_file(dir.path(), "admin");
    let mut host = pipeline(&bootstrap, "in", "out")
        .args(plugin_args(&["categorize"]))
        .args(["--admin", &admin])
        .stdout(Stdio::null())
        .stderr(log_out)
        .spawn()
        .expect("pipeline-host");
    wait_admin(port);
    let b = bootstrap.clone();
    let generator = std::thread::spawn(move || {
        generate(&b, "in", &["--count", "150000", "--rate", "10000"]);
    });
    wait_count(&client, "out", 1_000, Duration::from_secs(60)).await;

    // Fewer idle clients than slots: a scrape answers at once.
    let idle = tokio::task::spawn_blocking(move || {
        let idle = idle_clients(port, 200);
        let started = Instant::now();
        let (status, _) = http(port, "GET", "/metrics");
        (idle, status, started.elapsed())
    })
    .await
    .expect("scrape");
    let (mut idle, status, took) = idle;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(2), "scrape took {took:?}");
    let before = count(&client, "out").await;

    // More idle clients than slots: the excess is closed at once, the rest
    // after the header-read timeout; a scrape answers within it.
    let (status, took, closed) = tokio::task::spawn_blocking(move || {
        idle.extend(idle_clients(port, 300));
        let started = Instant::now();
        let status = eventually(Duration::from_secs(20), "a scrape answers", || {
            match std::panic::catch_unwind(|| http(port, "GET", "/metrics")) {
                Ok((200, _)) => Ok(200),
                Ok((s, body)) => Err(format!("{s}: {body}")),
                Err(_) => Err("connection closed: every slot taken".into()),
            }
        });
        let took = started.elapsed();
        let closed = idle
            .iter_mut()
            .map(|s| {
                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let mut byte = [0u8; 1];
                // A server that closed the connection: end of stream or
                // reset; a read that times out means it is still open.
                match s.read(&mut byte) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                }
            })
            .filter(|closed| *closed)
            .count();
        (status, took, closed)
    })
    .await
    .expect("scrape");
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(15), "scrape took {took:?}");
    assert_eq!(closed, 500, "every idle client is closed by the server");
    eprintln!("with 500 idle clients a scrape answered after {took:?}; all 500 were closed");

    // Throughput held meanwhile.
    wait_count(&client, "out", before + 5_000, Duration::from_secs(30)).await;
    generator.join().expect("generator");
    sigterm(&host);
    let status = wait_exit(&mut host, Duration::from_secs(30));
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_on_a_public_address_needs_a_token() {
    let (_broker, bootstrap, _client) = broker_with_topic("in", 1).await;
    let port = free_port();
    let admin = format!("0.0.0.0:{port}");
    let mut host = pipeline(&bootstrap, "in", "out")
        .args(plugin_args(&["categorize"]))
        .args(["--admin", &admin])
        .env_remove("PIPELINE_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pipeline-host");
    wait_admin(port);
    let (status, body) = http(port, "POST", "/reload");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs a token"), "{body}");
    assert_eq!(http(port, "GET", "/healthz").0, 200, "the probes stay open");
    sigterm(&host);
    assert!(wait_exit(&mut host, Duration::from_secs(30)).success());
}
