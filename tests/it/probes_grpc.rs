//! The `grpc` probe against a real gRPC server: Python's grpcio serving the standard health
//! service of grpcio-health-checking (`support/probe_grpc_server.py`; scripts/setup.sh installs
//! both). The server flips `shop.Cart` to NOT_SERVING when the run's fault kills a bystander
//! process, so the flip lands mid-run, after a baseline that passed.

use std::path::Path;
use std::time::Duration;

use crate::support::{Proc, Run, faultline, free_port, run_experiment, tempdir, wait_for_port};

const SERVER: &str = include_str!("support/probe_grpc_server.py");

struct Server {
    // Field order is drop order: the processes go before their directory.
    _python: Proc,
    /// The process whose death flips `shop.Cart`: the experiment's fault kills it.
    bystander: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    /// `tls`: serve TLS with this certificate, key and (optionally) required client CA.
    fn start(tls: Option<(&Path, &Path, Option<&Path>)>) -> Server {
        let importable = std::process::Command::new("python3")
            .args(["-c", "import grpc, grpc_health.v1.health"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            importable,
            "python3 cannot import grpc and grpc_health: run scripts/setup.sh (pip install grpcio grpcio-health-checking)"
        );
        let dir = tempdir();
        let script = dir.path().join("server.py");
        std::fs::write(&script, SERVER).unwrap();
        let port = free_port();
        // A unique command line, so the fault's selector matches this process and nothing else.
        let bystander = Proc::spawn(&["sleep", &format!("{}", 900_000 + u32::from(port))]);
        let (port_text, pid_text) = (port.to_string(), bystander.pid().to_string());
        let mut argv = vec![
            "python3",
            script.to_str().unwrap(),
            &port_text,
            "--watch-pid",
            &pid_text,
            "--down",
            "1.5",
        ];
        if let Some((cert, key, client_ca)) = tls {
            argv.extend([
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ]);
            if let Some(ca) = client_ca {
                argv.extend(["--client-ca", ca.to_str().unwrap()]);
            }
        }
        let server = Proc::spawn(&argv);
        wait_for_port(port, Duration::from_secs(20));
        Server {
            _python: server,
            bystander,
            port,
            dir,
        }
    }

    /// Runs a probe `grpc = { <grpc> }` with a fault that kills the bystander at 300 ms.
    fn run(&self, grpc: &str) -> Run {
        let victim = 900_000 + u32::from(self.port);
        let text = format!(
            r#"title = "grpc probe"
[steady_state]
window = "500ms"
[[steady_state.probe]]
name = "cart"
grpc = {{ {grpc} }}
every = "100ms"
timeout = "2s"
[[fault]]
name = "flip the cart"
kind = "process-kill"
select = {{ cmdline = "^sleep {victim}$" }}
at = "300ms"
[recovery]
within = "5s"
"#
        );
        run_experiment(self.dir.path(), &text, &[])
    }
}

fn errors(run: &Run, phase: &str) -> Vec<String> {
    run.report.as_ref().expect("a JSON report")["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["phase"] == phase)
        .filter_map(|s| s["error"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn serving_passes_and_a_flip_to_not_serving_mid_run_fails_samples_naming_the_status() {
    let mut server = Server::start(None);
    let address = format!("127.0.0.1:{}", server.port);
    let run = server.run(&format!(r#"address = "{address}", service = "shop.Cart""#));
    assert_eq!(run.code, 0, "{}", run.explain());
    assert_eq!(run.verdict(), "passed");
    assert!(!server.bystander.alive(), "the fault killed the bystander");
    // The baseline was all SERVING; after the flip, samples failed naming the status.
    assert!(
        errors(&run, "before").is_empty(),
        "{:?}",
        errors(&run, "before")
    );
    let failed: Vec<String> = ["during", "after"]
        .iter()
        .flat_map(|p| errors(&run, p))
        .collect();
    assert!(
        !failed.is_empty(),
        "no sample saw NOT_SERVING: {}",
        run.explain()
    );
    for e in &failed {
        assert_eq!(
            e,
            "health of service `shop.Cart` is NOT_SERVING, expected SERVING"
        );
    }
    let samples = run.report.as_ref().unwrap()["samples"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        samples.iter().any(|s| s["connect_ms"].as_f64().is_some()),
        "{samples:?}"
    );
}

#[test]
fn a_service_that_is_not_serving_or_unknown_never_passes_and_says_why() {
    let server = Server::start(None);
    let address = format!("127.0.0.1:{}", server.port);
    let run = server.run(&format!(r#"address = "{address}", service = "shop.Down""#));
    assert_eq!(run.code, 4, "{}", run.explain());
    let reason = run.report.as_ref().unwrap()["reason"].as_str().unwrap();
    assert!(reason.contains("NOT_SERVING in"), "{reason}");

    let run = server.run(&format!(
        r#"address = "{address}", service = "shop.Nothing""#
    ));
    assert_eq!(run.code, 4, "{}", run.explain());
    assert_eq!(
        errors(&run, "before")[0],
        "the server does not know service `shop.Nothing` (gRPC NOT_FOUND)"
    );

    // Nothing listens: a transport error, named.
    let closed = free_port();
    let run = server.run(&format!(
        r#"address = "127.0.0.1:{closed}", service = "shop.Cart""#
    ));
    assert_eq!(run.code, 4, "{}", run.explain());
    let error = &errors(&run, "before")[0];
    assert!(error.contains("onnection refused"), "{error}");
}

#[test]
fn a_tls_grpc_server_passes_with_its_ca_and_fails_without() {
    let dir = tempdir();
    let out = dir.path().join("certs");
    let made = faultline(
        &["certs", "--out", out.to_str().unwrap()],
        &dir.path().join("state"),
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let server = Server::start(Some((
        &out.join("agent.pem"),
        &out.join("agent-key.pem"),
        None,
    )));
    let address = format!("127.0.0.1:{}", server.port);
    let ca = out.join("ca.pem");
    let run = server.run(&format!(
        r#"address = "{address}", service = "shop.Cart", ca = "{}""#,
        ca.display()
    ));
    assert_eq!(run.code, 0, "{}", run.explain());

    let run = server.run(&format!(
        r#"address = "{address}", service = "shop.Cart", tls = true"#
    ));
    assert_eq!(run.code, 4, "{}", run.explain());
    let error = &errors(&run, "before")[0];
    assert!(error.contains("UnknownIssuer"), "{error}");
}

#[test]
fn a_grpc_server_that_requires_a_client_certificate_passes_with_client_cert_and_key() {
    let dir = tempdir();
    let out = dir.path().join("certs");
    let made = faultline(
        &["certs", "--out", out.to_str().unwrap()],
        &dir.path().join("state"),
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let ca = out.join("ca.pem");
    let server = Server::start(Some((
        &out.join("agent.pem"),
        &out.join("agent-key.pem"),
        Some(&ca),
    )));
    let address = format!("127.0.0.1:{}", server.port);
    // Without a client certificate the server ends the handshake: not SERVING, not a pass.
    let run = server.run(&format!(
        r#"address = "{address}", service = "shop.Cart", ca = "{}""#,
        ca.display()
    ));
    assert_eq!(run.code, 4, "{}", run.explain());
    // `insecure` skips checking the server, but still sends the client certificate.
    let run = server.run(&format!(
        r#"address = "{address}", service = "shop.Cart", insecure = true, client_cert = "{}", client_key = "{}""#,
        out.join("client.pem").display(),
        out.join("client-key.pem").display()
    ));
    assert_eq!(run.code, 0, "{}", run.explain());
    assert!(
        run.stderr
            .contains("warning: probe `cart` has `insecure = true`"),
        "{}",
        run.explain()
    );
}
