//! The real binary, started as a process on a free loopback port, with its log lines.

use super::Http;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ratewarden");
const WAIT: Duration = Duration::from_secs(20);

/// A running ratewarden process and its log lines.
pub struct Binary {
    pub child: Child,
    pub url: String,
    lines: Receiver<String>,
    http: Http,
}

impl std::ops::Deref for Binary {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

impl Binary {
    /// Starts the binary on a free loopback port with the database `db` and `args`.
    pub fn start(db: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["--bind", "127.0.0.1:0", "--database"])
            .arg(db)
            .args(args)
            .env("RUST_LOG", "ratewarden=debug,actix_server=warn")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut b = Binary {
            child,
            url: String::new(),
            lines,
            http: Http::new(""),
        };
        let line = b.wait_for("listening on http://");
        let addr = line
            .split("http://")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        b.url = format!("http://{addr}");
        b.http = Http::new(&b.url);
        b
    }

    /// Blocks until a log line contains `needle` (or fails after a generous deadline).
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    /// The log lines printed so far and not read yet (the process runs on).
    pub fn lines_so_far(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// The log lines not read yet, up to the process's exit (call after it exited).
    pub fn remaining_lines(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            out.push(line);
        }
        out
    }

    pub fn signal(&mut self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
