//! The embedded default database: a private PostgreSQL cluster the hub creates, starts and stops
//! itself from the machine's `initdb` and `pg_ctl`, so that `hub demo` needs nothing set up.
//!
//! The cluster lives in `<data-dir>/postgres`, listens on loopback only (no Unix socket), and
//! requires a password (SCRAM) generated at creation and kept in `<data-dir>/postgres.password`
//! (mode 0600). PostgreSQL refuses to run as root, so when the hub runs as root the server runs as
//! the `postgres` system user (through `runuser`), which then owns the cluster directory.
//!
//! One hub at a time owns a data directory (an exclusive lock on `<data-dir>/hub.lock`). The owner
//! starts the cluster (adopting one left running by a hub that was killed) and stops it on exit;
//! a second process on the same directory (e.g. `hub admin` next to a running hub) just connects.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use tracing::{info, warn};

pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    pgdata: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    password: String,
    as_postgres_user: bool,
    /// Held while this process owns the cluster; `None` when another hub owns it.
    lock: Option<File>,
    stopped: bool,
}

impl EmbeddedPostgres {
    /// Creates the cluster if needed and makes sure it runs. `port` 0 picks a free port.
    pub fn start(data_dir: &Path, bin_dir: Option<&Path>, port: u16) -> anyhow::Result<EmbeddedPostgres> {
        let bin_dir = find_bin_dir(bin_dir)?;
        fs::create_dir_all(data_dir).with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let data_dir = data_dir.canonicalize()?;
        let as_postgres_user = unsafe { libc::geteuid() } == 0;
        if as_postgres_user {
            // The postgres user must be able to reach its cluster directory.
            fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o755))?;
        }
        let pgdata = data_dir.join("postgres");
        let lock = try_lock(&data_dir.join("hub.lock"))?;
        let mut cluster = EmbeddedPostgres {
            pgdata,
            bin_dir,
            port,
            password: String::new(),
            as_postgres_user,
            lock,
            stopped: true, // nothing to stop until a server runs
            data_dir,
        };
        if cluster.lock.is_none() {
            // Another hub owns this directory: use its server as it is.
            cluster.password = cluster.read_password()?;
            cluster.port = cluster.running_port().context(
                "another hub holds this data directory but its PostgreSQL is not running; stop that hub or use another --data-dir",
            )?;
            info!(port = cluster.port, "using the embedded PostgreSQL of the hub that owns this data directory");
            return Ok(cluster);
        }
        if !cluster.pgdata.join("PG_VERSION").exists() {
            cluster.init()?;
        }
        cluster.password = cluster.read_password()?;
        if let Some(port) = cluster.running_port() {
            info!(port, "adopting the embedded PostgreSQL left running by a previous hub");
            cluster.port = port;
            cluster.stopped = false;
        } else {
            cluster.launch()?;
        }
        Ok(cluster)
    }

    pub fn url(&self) -> String {
        format!("postgres://medhub:{}@127.0.0.1:{}/medhub", self.password, self.port)
    }

    /// The maintenance database, for creating `medhub` on first start.
    pub fn admin_url(&self) -> String {
        format!("postgres://medhub:{}@127.0.0.1:{}/postgres", self.password, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    fn password_file(&self) -> PathBuf {
        self.data_dir.join("postgres.password")
    }

    fn read_password(&self) -> anyhow::Result<String> {
        let path = self.password_file();
        let password = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(password.trim().to_owned())
    }

    /// A `pg_ctl`/`initdb` command, run as the postgres user when we are root.
    fn pg_command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn init(&self) -> anyhow::Result<()> {
        info!(pgdata = %self.pgdata.display(), "creating the embedded PostgreSQL cluster");
        let password = random_password();
        let password_file = self.password_file();
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&password_file)?;
        writeln!(file, "{password}")?;
        drop(file);

        fs::create_dir_all(&self.pgdata)?;
        fs::set_permissions(&self.pgdata, fs::Permissions::from_mode(0o700))?;
        // initdb reads the superuser's password from a file it can open: a private copy in a
        // directory only the server's user can enter, removed right after.
        let pwdir = self.data_dir.join("initdb-secret");
        fs::create_dir_all(&pwdir)?;
        fs::set_permissions(&pwdir, fs::Permissions::from_mode(0o700))?;
        let pwfile = pwdir.join("password");
        fs::write(&pwfile, format!("{password}\n"))?;
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
        if self.as_postgres_user {
            chown_to_postgres(&self.pgdata)?;
            chown_to_postgres(&pwdir)?;
        }
        let output = self
            .pg_command("initdb")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-U", "medhub", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .context("cannot run initdb")?;
        let _ = fs::remove_dir_all(&pwdir);
        if !output.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        if self.port == 0 {
            self.port = free_port()?;
        }
        let log = self.data_dir.join("postgres.log");
        if self.as_postgres_user {
            File::create(&log)?;
            chown_to_postgres(&log)?;
        }
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''", self.port);
        let status = self
            .pg_command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options])
            .stdout(Stdio::null())
            .status()
            .context("cannot run pg_ctl")?;
        if !status.success() {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            bail!(
                "the embedded PostgreSQL did not start (pg_ctl {status}); last lines of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.stopped = false;
        info!(port = self.port, pgdata = %self.pgdata.display(), "embedded PostgreSQL started");
        Ok(())
    }

    /// The port of the server running on this cluster, if one runs.
    fn running_port(&self) -> Option<u16> {
        let pid_file = fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?;
        let mut lines = pid_file.lines();
        let pid: i32 = lines.next()?.trim().parse().ok()?;
        let port: u16 = lines.nth(2)?.trim().parse().ok()?;
        // Signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        alive.then_some(port)
    }

    /// Stops the server (fast shutdown: open sessions end, committed data is flushed).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let status = self
            .pg_command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-t", "60"])
            .stdout(Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => info!("embedded PostgreSQL stopped"),
            Ok(status) => warn!(%status, "pg_ctl stop failed"),
            Err(e) => warn!(error = %e, "cannot run pg_ctl stop"),
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where initdb and pg_ctl are: the configured directory, PATH, or Debian's versioned directories
/// (newest first).
fn find_bin_dir(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = configured {
        if has_tools(dir) {
            return Ok(dir.to_owned());
        }
        bail!("no initdb and pg_ctl in {} (pg_bin_dir)", dir.display());
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|dir| has_tools(dir)) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((version, dir)) if version >= 13 => Ok(dir),
        Some((version, _)) => bail!("PostgreSQL {version} is too old; medhub needs 13 or newer"),
        None => bail!(
            "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install them with \
             `sudo apt-get install -y postgresql` (Debian/Ubuntu), point --pg-bin-dir at them, \
             or set MEDHUB_DATABASE_URL to use an existing PostgreSQL server"
        ),
    }
}

fn try_lock(path: &Path) -> anyhow::Result<Option<File>> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    Ok(locked.then_some(file))
}

fn chown_to_postgres(path: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .context("cannot run chown")?;
    if !status.success() {
        bail!("chown postgres {} failed; does the postgres system user exist?", path.display());
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn random_password() -> String {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 24];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}
