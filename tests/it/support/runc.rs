//! A real OCI container for tests: a bundle whose root filesystem is built from `busybox-static`
//! (no image is pulled), run detached by Debian's `runc` with the host's network namespace (so
//! the host can probe it) and busybox `httpd` as its init. The guard deletes the container (thawing
//! it first, if frozen) and removes the bundle, even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{tempdir, wait_for_port, wait_until};

/// Whether `runc` and `busybox` are installed (`scripts/setup.sh` installs both). A test that
/// needs them fails when `FAULTLINE_REQUIRE_PRIVILEGED=1` and they are missing, else skips loudly.
#[must_use]
pub fn available(test: &str) -> bool {
    if !super::privileged(test) {
        return false;
    }
    let have = |p: &str| {
        Command::new(p)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    let found = have("runc") && Path::new(BUSYBOX).is_file();
    if found {
        return true;
    }
    assert!(
        std::env::var("FAULTLINE_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "{test} needs `runc` and `busybox-static` (run scripts/setup.sh)"
    );
    eprintln!("SKIPPED {test}: needs `runc` and `busybox-static`; run scripts/setup.sh");
    false
}

const BUSYBOX: &str = "/bin/busybox";

/// A runc container serving HTTP on 127.0.0.1:`port`, deleted on drop.
pub struct Container {
    pub id: String,
    pub port: u16,
    bundle: tempfile::TempDir,
}

impl Container {
    /// Builds a bundle and runs it as container `id` (unique per test: ids are host-wide), with
    /// `annotations` in its config (runc records them in its state as labels).
    pub fn start(id: &str, port: u16, annotations: &[(&str, &str)]) -> Container {
        let bundle = tempdir();
        build_bundle(bundle.path(), port, annotations);
        let container = Container {
            id: id.to_owned(),
            port,
            bundle,
        };
        // A container left by an earlier crashed test under the same id would make `run` fail.
        container.delete();
        container.run();
        container
    }

    fn run(&self) {
        let log = self.bundle.path().join("runc.log");
        let status = Command::new("runc")
            .args(["run", "--detach", "--pid-file"])
            .arg(self.bundle.path().join("init.pid"))
            .arg("--bundle")
            .arg(self.bundle.path())
            .arg(&self.id)
            // Detached: the container's stdio must not hold the test's pipes open.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create runc log"))
            .status()
            .expect("run runc");
        assert!(
            status.success(),
            "runc run {} failed: {}",
            self.id,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        wait_for_port(self.port, Duration::from_secs(10));
    }

    /// `runc state`'s status: `running`, `paused`, `stopped`, or `absent` when runc has none.
    pub fn state(&self) -> String {
        state_of(&self.id)
    }

    /// The host pid of the container's init, from runc.
    pub fn init_pid(&self) -> Option<u32> {
        let out = Command::new("runc")
            .args(["state", &self.id])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["pid"].as_u64().map(|p| p as u32).filter(|p| *p > 0)
    }

    /// Deletes a stopped container and runs it again under the same id (a restart policy).
    pub fn restart(&self) {
        self.delete();
        self.run();
    }

    /// The container's v1 freezer directory on this host, if it has one.
    pub fn freezer_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/cgroup/freezer").join(&self.id)
    }

    fn delete(&self) {
        // A frozen container cannot be killed until it is thawed.
        let _ = std::fs::write(self.freezer_dir().join("freezer.state"), "THAWED");
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        wait_until(
            "runc forgetting the container",
            Duration::from_secs(10),
            || state_of(&self.id) == "absent",
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.delete();
    }
}

/// `runc state ID`'s status, or `absent`.
pub fn state_of(id: &str) -> String {
    let Ok(out) = Command::new("runc")
        .args(["state", id])
        .stderr(Stdio::null())
        .output()
    else {
        return "absent".to_owned();
    };
    if !out.status.success() {
        return "absent".to_owned();
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["status"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "absent".to_owned())
}

/// rootfs from busybox (`httpd` as init, serving `/www`), and `runc spec`'s config edited: no
/// terminal, the host's network namespace, `httpd` on the test's port.
fn build_bundle(dir: &Path, port: u16, annotations: &[(&str, &str)]) {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "www", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub)).expect("create rootfs dirs");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "httpd", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .expect("link applet");
    }
    std::fs::write(rootfs.join("www/index.html"), "ok\n").expect("write index");
    let status = Command::new("runc")
        .arg("spec")
        .current_dir(dir)
        .status()
        .expect("run runc spec");
    assert!(status.success(), "runc spec failed");
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!([
        "httpd",
        "-f",
        "-p",
        format!("127.0.0.1:{port}"),
        "-h",
        "/www"
    ]);
    let namespaces = config["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != "network");
    let notes: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).into()))
        .collect();
    config["annotations"] = notes.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}
