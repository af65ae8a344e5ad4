//! Real Redis servers for the distributed-mode tests: `redis-server` started by the test
//! on a free loopback port (never one already running), a three-master Redis Cluster,
//! and a primary with a replica watched by three `redis-sentinel`s. Each is stopped when
//! dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    cluster: bool,
    /// More arguments for `redis-server` (a replica's `--replicaof`).
    args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

/// A port that was free a moment ago (and, for cluster nodes, whose bus port + 10000
/// fits).
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisServer {
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = Self::spawn(free_port(), dir, false, Vec::new());
        s._tmp = Some(tmp);
        s
    }

    fn spawn(port: u16, dir: PathBuf, cluster: bool, args: Vec<String>) -> Self {
        let mut s = Self {
            port,
            child: None,
            dir,
            cluster,
            args,
            _tmp: None,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, and returns once it accepts connections.
    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args([
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "notice",
            ])
            .arg("--dir")
            .arg(&self.dir);
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(format!("nodes-{port}.conf"));
        }
        cmd.args(&self.args);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server; see .ci/run)");
        let lines = lines_of(child.stdout.take().unwrap());
        wait_for_line(&lines, "Ready to accept connections");
        self.child = Some(child);
    }

    /// SIGKILL: no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it serves as a replica now.
    pub fn is_replica(&self) -> bool {
        self.cli(&["role"]).starts_with("slave")
    }

    /// Runs `redis-cli` against this server and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

/// Runs `redis-cli` against the server (or sentinel) on `port` and returns what it
/// printed.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The lines a child prints, read on a thread.
fn lines_of(out: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_line(lines: &Receiver<String>, needle: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(e) => panic!("redis-server printed no {needle:?}: {e}"),
        }
    }
}

/// Three masters, every slot assigned; with replicas, one replica each.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _tmp: tempfile::TempDir,
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub fn start() -> Self {
        Self::create(0, Vec::new())
    }

    /// Three masters with a replica each, which takes over a second after its master
    /// stops answering (`cluster-node-timeout` 1000 ms).
    pub fn with_replicas() -> Self {
        let timeout = vec!["--cluster-node-timeout".to_owned(), "1000".to_owned()];
        Self::create(1, timeout)
    }

    fn create(replicas: usize, args: Vec<String>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| RedisServer::spawn(free_port(), tmp.path().to_owned(), true, args.clone()))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.contains("All 16384 slots covered"), "{printed}");
        // `--cluster create` returns once the configuration is consistent; every node
        // must also see the cluster as up before it serves keys, and every replica be
        // in sync with its master before it can take over.
        let deadline = Instant::now() + WAIT;
        for node in &nodes {
            while !node.cli(&["cluster", "info"]).contains("cluster_state:ok")
                || (node.is_replica()
                    && !node
                        .cli(&["info", "replication"])
                        .contains("master_link_status:up"))
            {
                assert!(Instant::now() < deadline, "the cluster never became ok");
                std::thread::yield_now();
            }
        }
        Self { nodes, _tmp: tmp }
    }

    /// The master that holds `tag`'s hash slot now (asked of a live node).
    pub fn master_of(&self, tag: &str) -> usize {
        let live = (self.nodes.iter())
            .find(|n| n.child.is_some())
            .expect("a live node");
        let slot: u16 = live
            .cli(&["cluster", "keyslot", tag])
            .trim()
            .parse()
            .unwrap();
        let table = live.cli(&["cluster", "nodes"]);
        let port = table
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .find(|l| {
                l.split(' ').skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                })
            })
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|addr| addr.split(['@', ':']).nth(1))
            .and_then(|p| p.parse::<u16>().ok())
            .expect("a master holds the slot");
        (self.nodes.iter()).position(|n| n.port == port).unwrap()
    }

    /// The seed-node list for `--redis-url` (with `--redis-cluster`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The name the sentinels monitor the primary under.
pub const SERVICE: &str = "rwprimary";

/// A primary, its replica, and three `redis-sentinel`s (quorum two) that fail over to
/// the replica half a second after the primary stops answering.
pub struct RedisSentinels {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinel_ports: Vec<u16>,
    sentinels: Vec<Child>,
    _tmp: tempfile::TempDir,
}

impl RedisSentinels {
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = |name: &str| {
            let d = tmp.path().join(name);
            std::fs::create_dir(&d).unwrap();
            d
        };
        let primary = RedisServer::spawn(free_port(), dir("primary"), false, Vec::new());
        let replicaof = vec![
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary.port.to_string(),
        ];
        let replica = RedisServer::spawn(free_port(), dir("replica"), false, replicaof);
        // The sentinels learn the replica from the primary when they start: it must be
        // attached by then.
        until(|| {
            primary
                .cli(&["info", "replication"])
                .contains("state=online")
        });
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = tmp.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {SERVICE} 500\n\
                     sentinel failover-timeout {SERVICE} 3000\n\
                     sentinel parallel-syncs {SERVICE} 1\n",
                    dir = tmp.path().display(),
                    primary = primary.port,
                ),
            )
            .unwrap();
            let mut child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel runs (apt-get install redis-sentinel; see scripts/test)");
            let lines = lines_of(child.stdout.take().unwrap());
            wait_for_line(&lines, "+monitor master");
            sentinels.push(child);
            sentinel_ports.push(port);
        }
        let s = Self {
            primary,
            replica,
            sentinel_ports,
            sentinels,
            _tmp: tmp,
        };
        // A failover needs the quorum: each sentinel must know the others (they greet
        // each other through the primary every two seconds) and the replica.
        for port in &s.sentinel_ports {
            until(|| {
                let others = cli(*port, &["sentinel", "sentinels", SERVICE]);
                let replicas = cli(*port, &["sentinel", "replicas", SERVICE]);
                others.matches("runid").count() == 2 && replicas.contains("runid")
            });
        }
        s
    }

    /// `--redis-url` for ratewarden.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = (self.sentinel_ports.iter())
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{SERVICE}", hosts.join(","))
    }

    /// The port of the server the first sentinel names as the primary now.
    pub fn primary_named(&self) -> Option<u16> {
        let out = cli(
            self.sentinel_ports[0],
            &["sentinel", "get-master-addr-by-name", SERVICE],
        );
        out.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for c in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Asks `done` again (every 50 ms, for commands that talk to other processes) until it
/// says yes, at most [`WAIT`].
fn until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "never came to pass");
        std::thread::sleep(Duration::from_millis(50));
    }
}
