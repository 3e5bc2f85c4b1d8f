//! The gateway as a child process, its stderr collected line by line: for what only the
//! real binary shows (signals, exit, the JSON log, file-size limits).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::WAIT;

pub struct Binary {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    /// `portcullis <args>`.
    pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Binary {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(args);
        Self::spawn_command(cmd)
    }

    /// `portcullis --log-format json serve --config <config>`.
    pub fn serve(config: &Path) -> Binary {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(["--log-format", "json", "serve", "--config"]).arg(config);
        Self::spawn_command(cmd)
    }

    /// As [`Binary::serve`], under a shell's `ulimit -f` (KiB), SIGXFSZ left at its
    /// default (death), as an operator's shell or unit would start it.
    pub fn serve_limited(config: &Path, kib: u64) -> Binary {
        let mut cmd = std::process::Command::new("bash");
        cmd.args(["-c", "ulimit -f \"$0\" && exec \"$@\""])
            .arg(kib.to_string())
            .arg(env!("CARGO_BIN_EXE_portcullis"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(config);
        Self::spawn_command(cmd)
    }

    fn spawn_command(mut cmd: std::process::Command) -> Binary {
        use std::io::BufRead;
        cmd.env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Binary { child, lines }
    }

    /// Has the process exited (and how)? `None` while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).unwrap()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Limit the size of any file the gateway writes (soft limit; the hard one stays).
    pub fn limit_file_size(&self, bytes: u64) {
        let limit = libc::rlimit { rlim_cur: bytes, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: prlimit(2) on our own child; `limit` outlives the call, no old value asked.
        let rc = unsafe { libc::prlimit(self.pid(), libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every stderr line so far, as one text (for failure messages).
    pub fn raw(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The JSON log lines (anything else, e.g. a panic message, is skipped here).
    pub fn json(&self) -> Vec<Value> {
        self.lines.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The fields of every access-log line.
    pub fn access(&self) -> Vec<Value> {
        self.json().into_iter().filter(|v| v["target"] == "portcullis::access").map(|v| v["fields"].clone()).collect()
    }

    /// Wait for a whole JSON line that satisfies `pred` (`what` names it on failure).
    pub async fn wait_line(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(v) = self.json().into_iter().find(|v| pred(v)) {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "no {what} line; stderr so far:\n{}", self.raw());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The fields of the first line whose message is `message` and whose fields satisfy
    /// `also`, waiting for it.
    pub async fn wait_for_with(&self, message: &str, also: impl Fn(&Value) -> bool) -> Value {
        let line =
            self.wait_line(&format!("{message:?}"), |v| v["fields"]["message"] == message && also(&v["fields"])).await;
        line["fields"].clone()
    }

    /// The fields of the first line whose message is `message`, waiting for it.
    pub async fn wait_for(&self, message: &str) -> Value {
        self.wait_for_with(message, |_| true).await
    }

    /// Index of the first line with this message, if any.
    pub fn position(&self, message: &str) -> Option<usize> {
        self.json().iter().position(|v| v["fields"]["message"] == message)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
