//! Support for the end-to-end tests: a real thingd (in-process or as a child process) on
//! 127.0.0.1 with a throwaway data directory, device certificates, and the clients nobody here
//! wrote (rumqttc, Python paho-mqtt, mosquitto_pub/mosquitto_sub).
//!
//! This is one crate so the costly test utilities compile once; the tests are modules of the
//! single `e2e` test binary (`src/tests.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use thingd_server::{Config, RunningServer, Server};

/// Installs aws-lc-rs as the process's rustls provider (rumqttc builds its configs with the
/// process default). Safe to call many times.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A thingd running inside the test process.
pub struct TestServer {
    /// The running server.
    pub running: RunningServer,
    /// The data directory (deleted on drop).
    pub data_dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts thingd with the test configuration (127.0.0.1, OS-chosen ports).
    pub async fn start() -> anyhow::Result<TestServer> {
        Self::start_with(|_| {}).await
    }

    /// Starts thingd after `adjust` has changed the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<TestServer> {
        install_crypto_provider();
        let data_dir = tempfile::tempdir()?;
        let mut config = Config::for_tests(data_dir.path());
        adjust(&mut config);
        let running = Server::start(config).await?;
        Ok(TestServer { running, data_dir })
    }

    /// The MQTT-over-TLS address.
    pub fn mqtts(&self) -> SocketAddr {
        self.running.mqtts.expect("mqtts listener is on in tests")
    }

    /// Issues a device certificate (registered ACTIVE) and writes its files to a new
    /// directory inside the data directory.
    pub async fn issue_device(&self, name: &str) -> anyhow::Result<DeviceFiles> {
        issue_device(self.data_dir.path(), name).await
    }

    /// Stops the server cleanly.
    pub async fn stop(self) -> tempfile::TempDir {
        self.running.stop().await;
        self.data_dir
    }
}

/// A device's certificate, key and the root CA, as files (the AWS file names).
#[derive(Debug, Clone)]
pub struct DeviceFiles {
    /// The directory holding the three files.
    pub dir: PathBuf,
    /// The certificate id.
    pub id: String,
    /// `certificate.pem.crt`
    pub cert: PathBuf,
    /// `private.pem.key`
    pub key: PathBuf,
    /// `root-ca.pem`
    pub ca: PathBuf,
}

impl DeviceFiles {
    /// The rumqttc TLS transport for this device.
    pub fn rumqttc_transport(&self) -> rumqttc::Transport {
        let read = |p: &Path| std::fs::read(p).expect("device file");
        rumqttc::Transport::tls(
            read(&self.ca),
            Some((read(&self.cert), read(&self.key))),
            None,
        )
    }
}

/// Issues a device certificate with the `thingd cert issue` logic, through the CLI binary
/// when it is available, else in-process.
pub async fn issue_device(data_dir: &Path, name: &str) -> anyhow::Result<DeviceFiles> {
    let out = data_dir.join("devices").join(name);
    let data_dir = data_dir.to_path_buf();
    let name = name.to_owned();
    let out2 = out.clone();
    let id = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let status = Command::new(thingd_binary()?)
            .args(["cert", "issue", "--common-name", &name, "--out"])
            .arg(&out2)
            .arg("--data-dir")
            .arg(&data_dir)
            .output()?;
        if !status.status.success() {
            bail!(
                "thingd cert issue failed: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&status.stdout);
        let id = stdout
            .split_whitespace()
            .nth(1)
            .context("no certificate id in `thingd cert issue` output")?
            .to_owned();
        Ok(id)
    })
    .await??;
    Ok(DeviceFiles {
        id,
        cert: out.join("certificate.pem.crt"),
        key: out.join("private.pem.key"),
        ca: out.join("root-ca.pem"),
        dir: out,
    })
}

/// Runs `thingd cert set-status`.
pub fn set_certificate_status(data_dir: &Path, id: &str, status: &str) -> anyhow::Result<()> {
    let output = Command::new(thingd_binary()?)
        .args(["cert", "set-status", id, status, "--data-dir"])
        .arg(data_dir)
        .output()?;
    if !output.status.success() {
        bail!(
            "thingd cert set-status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The `thingd` binary built next to this test binary (`cargo build --workspace` or
/// `cargo nextest run --workspace` builds it).
pub fn thingd_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("THINGD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/thingd
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test binary location")?;
    let bin = profile_dir.join("thingd");
    if !bin.exists() {
        bail!(
            "{} not found: build it first with `cargo build --workspace --bins`",
            bin.display()
        );
    }
    Ok(bin)
}

/// A thingd running as a child process, for restart and kill -9 tests.
pub struct ProcessServer {
    child: Option<Child>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The MQTT-over-TLS address.
    pub mqtts: SocketAddr,
    /// The metrics address.
    pub metrics: SocketAddr,
    extra_args: Vec<String>,
    /// The open-file limit (soft and hard) the process runs under, if not the test's own.
    file_limit: Option<u64>,
}

impl ProcessServer {
    /// Starts `thingd serve` on `data_dir` with OS-chosen ports, or the given ports to reuse
    /// after a restart.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> anyhow::Result<ProcessServer> {
        Self::start_on(
            data_dir,
            "127.0.0.1:0".parse()?,
            "127.0.0.1:0".parse()?,
            extra_args,
            None,
        )
    }

    /// As [`ProcessServer::start`], with the open-file limit (soft and hard, so thingd cannot
    /// raise it) set to `limit` by util-linux's `prlimit`.
    pub fn start_with_file_limit(
        data_dir: &Path,
        extra_args: &[&str],
        limit: u64,
    ) -> anyhow::Result<ProcessServer> {
        Self::start_on(
            data_dir,
            "127.0.0.1:0".parse()?,
            "127.0.0.1:0".parse()?,
            extra_args,
            Some(limit),
        )
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn start_on(
        data_dir: &Path,
        mqtts: SocketAddr,
        metrics: SocketAddr,
        extra_args: &[&str],
        file_limit: Option<u64>,
    ) -> anyhow::Result<ProcessServer> {
        let listeners = data_dir.join("listeners.json");
        let _ = std::fs::remove_file(&listeners);
        // prlimit runs the command in its own process (exec), so the pid is thingd's.
        let mut command = match file_limit {
            Some(limit) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(thingd_binary()?);
                c
            }
            None => Command::new(thingd_binary()?),
        };
        let child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--mqtts")
            .arg(mqtts.to_string())
            .arg("--https")
            .arg("127.0.0.1:0")
            .arg("--metrics")
            .arg(metrics.to_string())
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut server = ProcessServer {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            mqtts,
            metrics,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            file_limit,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&listeners) {
                let json: serde_json::Value = serde_json::from_str(&text)?;
                server.mqtts = json["mqtts"].as_str().context("mqtts")?.parse()?;
                server.metrics = json["metrics"].as_str().context("metrics")?.parse()?;
                return Ok(server);
            }
            if let Some(child) = server.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("thingd exited during start: {status}");
            }
            if Instant::now() > deadline {
                bail!("thingd did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL (no clean shutdown).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM and waits for it.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status()?;
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("thingd did not stop within 15 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Starts the server again on the same data directory and the same ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        let args: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        let data_dir = self.data_dir.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The old socket may linger briefly; retry the bind.
        loop {
            match Self::start_on(&data_dir, self.mqtts, self.metrics, &args, self.file_limit) {
                Ok(mut next) => {
                    self.child = next.child.take();
                    return Ok(());
                }
                Err(error) if Instant::now() < deadline => {
                    tracing_free_log(&format!("restart retry: {error:#}"));
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => return Err(error),
            }
        }
    }
}

impl Drop for ProcessServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn tracing_free_log(message: &str) {
    eprintln!("[e2e] {message}");
}

/// The Python interpreter of the test virtualenv (`.venv` at the repository root, made by
/// `scripts/test`), or `THINGD_TEST_PYTHON`.
pub fn python() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("THINGD_TEST_PYTHON") {
        return Ok(PathBuf::from(path));
    }
    let venv = repo_root().join(".venv/bin/python");
    if !venv.exists() {
        bail!(
            "{} is missing: run scripts/test (it creates the venv with paho-mqtt)",
            venv.display()
        );
    }
    Ok(venv)
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Fetches the Prometheus text from a metrics address.
pub async fn scrape_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Child processes with deadlines: the paho-mqtt scenario script and the mosquitto clients.

/// What a child process printed, once it has exited.
#[derive(Debug)]
pub struct Finished {
    /// What ran, for messages.
    pub what: String,
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Everything it wrote on stdout.
    pub stdout: String,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

impl Finished {
    /// Fails with the captured output unless the process exited with status 0.
    pub fn ok(self) -> anyhow::Result<Finished> {
        if !self.status.success() {
            bail!("{self}");
        }
        Ok(self)
    }

    /// The `result` object of a paho scenario (its last stdout line); fails with the captured
    /// output if the scenario did not exit 0 or printed no result.
    pub fn paho_result(&self) -> anyhow::Result<serde_json::Value> {
        if !self.status.success() {
            bail!("{self}");
        }
        let last = self
            .stdout
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .unwrap_or_default();
        let mut line: serde_json::Value =
            serde_json::from_str(last).with_context(|| format!("no JSON result line: {self}"))?;
        match line.get_mut("result") {
            Some(result) => Ok(result.take()),
            None => bail!("the last line has no \"result\": {self}"),
        }
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exited with {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

/// A child process whose stdout is read line by line in the background, so a test can wait
/// for a line with a deadline. The process is killed when this is dropped.
pub struct Watched {
    what: String,
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Watched {
    /// Starts `command` with stdout and stderr captured and stdin closed.
    pub fn spawn(command: &mut Command, what: &str) -> anyhow::Result<Watched> {
        use std::io::{BufRead as _, Read as _};
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!("cannot run {program} ({what}); is it installed and on PATH?")
            })?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut stderr = child.stderr.take().context("stderr")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Ok(Watched {
            what: what.to_owned(),
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        })
    }

    /// Waits up to `timeout` for a stdout line for which `wanted` is true and returns it.
    pub fn wait_for_line(
        &mut self,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return Ok(line);
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stderr = self
                        .stderr
                        .take()
                        .and_then(|h| h.join().ok())
                        .unwrap_or_default();
                    bail!(
                        "{}: the expected line did not come within {timeout:?}\n--- stdout:\n{}\n--- stderr:\n{stderr}",
                        self.what,
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Waits up to `timeout` for the process to exit (killing it after that) and returns its
    /// output; a process that had to be killed is an error carrying what it printed.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<Finished> {
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    timed_out = true;
                    break;
                }
            }
        }
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if timed_out || Instant::now() > deadline {
                timed_out = true;
                let _ = self.child.kill();
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let finished = Finished {
            what: self.what.clone(),
            status,
            stdout: self.seen.join("\n"),
            stderr,
        };
        if timed_out {
            bail!(
                "{} did not finish within {timeout:?} and was killed: {finished}",
                self.what
            );
        }
        Ok(finished)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `command` to completion, killing it after `timeout`.
pub fn run_with_timeout(
    command: &mut Command,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<Finished> {
    Watched::spawn(command, what)?.finish(timeout)
}

/// `tests/python/paho_scenarios.py`.
pub fn paho_script() -> PathBuf {
    repo_root().join("tests/python/paho_scenarios.py")
}

/// The command running paho scenario `scenario` with `device`'s certificate against
/// 127.0.0.1:`port`; add the scenario's options with `.args(..)`.
pub fn paho_command(scenario: &str, device: &DeviceFiles, port: u16) -> anyhow::Result<Command> {
    let mut command = Command::new(python()?);
    command
        .arg(paho_script())
        .arg(scenario)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--ca")
        .arg(&device.ca)
        .arg("--cert")
        .arg(&device.cert)
        .arg("--key")
        .arg(&device.key)
        .env("PYTHONUNBUFFERED", "1");
    Ok(command)
}

/// Runs a paho scenario to completion (at most `timeout`) and returns its result object.
pub fn run_paho(
    scenario: &str,
    device: &DeviceFiles,
    port: u16,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let mut command = paho_command(scenario, device, port)?;
    command.args(args);
    run_with_timeout(
        &mut command,
        &format!("paho scenario {scenario} {}", args.join(" ")),
        timeout,
    )?
    .paho_result()
}

/// The payloads of a list of messages as the paho scenarios report them.
pub fn payloads(messages: &serde_json::Value) -> Vec<String> {
    messages
        .as_array()
        .map(|list| {
            list.iter()
                .map(|m| m["payload"].as_str().unwrap_or("<no payload>").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Issues device certificates with the CLI while `server` runs, then waits until the server
/// has re-read the certificate registry (it polls the store every 250 ms).
pub async fn issue_devices_ready(
    server: &TestServer,
    names: &[&str],
) -> anyhow::Result<Vec<DeviceFiles>> {
    let mut devices = Vec::new();
    for name in names {
        devices.push(server.issue_device(name).await?);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    Ok(devices)
}
