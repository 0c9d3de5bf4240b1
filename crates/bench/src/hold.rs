//! Idle connections past what one process may open: the load generator keeps as many as its
//! open-file limit allows and hands the rest to `thingd-bench hold` child processes, each
//! with a limit of its own. A child opens its share, prints `held N`, waits for its standard
//! input to close, pings every connection, prints `alive N` and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::brokers::Pki;
use crate::client::{Conn, Endpoint};
use crate::scenarios::{open_many, still_open};

/// Connections one child holds at most (each child's open-file limit is the parent's).
const PER_CHILD: usize = 16_000;
/// How long a child may take to open its share.
const OPEN_WITHIN: Duration = Duration::from_secs(600);

/// Where idle connections go past what this process may hold itself.
#[derive(Debug)]
pub(crate) struct Spill {
    /// The certificates the children's mTLS connections present and pin.
    pub(crate) pki: Pki,
    /// Idle connections this process holds itself before it starts children.
    pub(crate) local: usize,
}

/// `thingd-bench hold` (used by the tool itself): holds connections for a parent run.
#[derive(clap::Args, Debug)]
pub(crate) struct HoldArgs {
    /// The broker's address.
    #[arg(long)]
    addr: SocketAddr,
    /// Connections to open.
    #[arg(long)]
    count: usize,
    /// Client ids are `{prefix}{i}`.
    #[arg(long)]
    prefix: String,
    /// Connect over mTLS with these files (the pinned server certificate, the device
    /// certificate and key); plain TCP without them.
    #[arg(long, num_args = 3, value_names = ["SERVER_CERT", "DEVICE_CERT", "DEVICE_KEY"])]
    mtls: Option<Vec<PathBuf>>,
}

/// Idle connections held for a scenario, here and in child processes.
pub(crate) struct Held {
    local: Vec<Conn>,
    children: Vec<Holder>,
}

struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    count: usize,
}

impl Holder {
    /// The next line the child prints, which must start with `word`; its number.
    async fn expect(&mut self, word: &str, within: Duration) -> anyhow::Result<usize> {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .with_context(|| format!("a holder printed no `{word}` line in {within:?}"))??;
        let Some(line) = line else {
            let mut stderr = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr).await;
            }
            bail!("a holder exited before `{word}`: {}", stderr.trim());
        };
        line.strip_prefix(word)
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("a holder printed {line:?}, expected `{word} N`"))
    }
}

/// Opens `n` idle connections with ids `{prefix}{i}`: as many here as `ep.spill` allows (all
/// of them without it), the rest in child processes, all at once.
pub(crate) async fn hold(ep: &Endpoint, prefix: &str, n: usize) -> anyhow::Result<Held> {
    let local = ep.spill.as_ref().map_or(n, |s| s.local.min(n));
    let mut children = Vec::new();
    if let Some(spill) = ep.spill.as_ref().filter(|_| n > local) {
        let exe = std::env::current_exe()?;
        let mut start = local;
        while start < n {
            let count = (n - start).min(PER_CHILD);
            let mut command = tokio::process::Command::new(&exe);
            command
                .arg("hold")
                .arg("--addr")
                .arg(ep.addr.to_string())
                .arg("--count")
                .arg(count.to_string())
                .arg("--prefix")
                .arg(format!("{prefix}c{start}-"));
            if ep.tls.is_some() {
                command
                    .arg("--mtls")
                    .arg(&spill.pki.server_cert)
                    .arg(&spill.pki.device_cert)
                    .arg(&spill.pki.device_key);
            }
            let mut child = command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting a holder process")?;
            let stdin = child.stdin.take();
            let stdout = child.stdout.take().context("holder stdout")?;
            children.push(Holder {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
                count,
            });
            start += count;
        }
    }
    let conns = open_idle(ep, prefix, local).await?;
    for h in &mut children {
        let held = h.expect("held", OPEN_WITHIN).await?;
        if held != h.count {
            bail!("a holder opened {held} of {} connections", h.count);
        }
    }
    Ok(Held {
        local: conns,
        children,
    })
}

impl Held {
    /// Pings every connection, then closes them all; how many answered.
    pub(crate) async fn still_open(self) -> anyhow::Result<u64> {
        let mut children = self.children;
        for h in &mut children {
            // End of input: the child pings its connections and reports.
            drop(h.stdin.take());
        }
        let mut alive = still_open(self.local).await?;
        for h in &mut children {
            alive += h.expect("alive", Duration::from_secs(300)).await? as u64;
            let _ = h.child.wait().await;
        }
        Ok(alive)
    }
}

/// Opens `n` connections to hold idle, their buffers given back.
async fn open_idle(ep: &Endpoint, prefix: &str, n: usize) -> anyhow::Result<Vec<Conn>> {
    let ep = Endpoint {
        reset_on_close: true,
        ..ep.clone()
    };
    let mut conns = open_many(&ep, prefix, n).await?;
    for c in &mut conns {
        c.release_buffers();
    }
    Ok(conns)
}

/// The `hold` command.
pub(crate) async fn run(args: HoldArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tls = match &args.mtls {
        Some(files) => {
            let [server, cert, key] = files.as_slice() else {
                bail!("--mtls takes three files");
            };
            Some(Arc::new(crate::brokers::client_config(server, cert, key)?))
        }
        None => None,
    };
    let ep = Endpoint {
        addr: args.addr,
        tls,
        spill: None,
        reset_on_close: true,
    };
    let conns = open_idle(&ep, &args.prefix, args.count).await?;
    let mut out = std::io::stdout();
    writeln!(out, "held {}", conns.len())?;
    out.flush()?;
    let mut rest = Vec::new();
    tokio::io::stdin().read_to_end(&mut rest).await?;
    let alive = still_open(conns).await?;
    writeln!(out, "alive {alive}")?;
    out.flush()?;
    Ok(())
}
