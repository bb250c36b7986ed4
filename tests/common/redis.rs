//! A private Redis for one test: Debian's `redis-server` on a free loopback port, in its own
//! temporary directory, persisting nothing, killed on drop. The multi-node stories point their
//! hubs' `--redis-url` at it, and stop and restart it to play an outage.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct TestRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// Starts a Redis and waits until it answers PING; panics (saying what to install) if it cannot.
    pub async fn start() -> TestRedis {
        tokio::task::spawn_blocking(|| {
            let dir = tempfile::Builder::new().prefix("medhub-redis-").tempdir().expect("temp dir");
            // A free port can be taken between asking and binding: try a few.
            let mut last_error = None;
            for _ in 0..5 {
                let port = free_port();
                match spawn(port, dir.path().to_owned()) {
                    Ok(child) => return TestRedis { child: Some(child), port, dir },
                    Err(e) => last_error = Some(e),
                }
            }
            panic!("redis-server did not start (apt-get install redis-server; `bash scripts/test` installs it): {:#}", last_error.expect("an attempt"));
        })
        .await
        .expect("start task")
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// kill -9: the hubs' connections drop at once, as when Redis crashes.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Redis again on the same port (empty, as after a crash without persistence).
    pub async fn restart(&mut self) {
        self.kill();
        let (port, dir) = (self.port, self.dir.path().to_owned());
        let child = tokio::task::spawn_blocking(move || spawn(port, dir)).await.expect("start task").expect("redis-server restarts on its port");
        self.child = Some(child);
    }

    /// What Redis logged (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn spawn(port: u16, dir: PathBuf) -> anyhow::Result<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(&dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run redis-server")?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exited = child.try_wait().ok().flatten();
        // Answering while our server is still running: not another process that holds the port.
        if exited.is_none() && answers_ping(address) && matches!(child.try_wait(), Ok(None)) {
            return Ok(child);
        }
        if let Some(status) = exited {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            bail!("redis-server exited ({status}) on port {port}:\n{log}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("redis-server did not answer PING on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn answers_ping(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
