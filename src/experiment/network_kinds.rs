//! Tests of reading the kernel network faults from TOML: `network-loss`, `partition`,
//! `bandwidth`, and `latency` with `backend = "netem"`.

use std::path::Path;

use crate::fault::FaultSpec;

fn parse(fault: &str) -> Result<FaultSpec, String> {
    crate::experiment::parse(
        Path::new("x.toml"),
        &format!(
            "{}duration = \"5s\"\n{fault}",
            crate::experiment::ONE_FAULT_HEAD
        ),
    )
    .map(|e| e.faults.into_iter().next().unwrap().spec)
    .map_err(|e| e.to_string())
}

#[test]
fn the_documented_keys_parse_for_every_network_kind() {
    let loss = parse("kind = \"network-loss\"\npercent = \"30%\"\nmatch = { dst = \"10.0.0.0/24\", port = 5432, direction = \"egress\" }\n").unwrap();
    assert_eq!(loss.kind(), "network-loss");
    let cut =
        parse("kind = \"partition\"\npeers = [\"10.0.0.5\", \"10.0.1.0/24\"]\nports = [5432]\n")
            .unwrap();
    assert_eq!(cut.kind(), "partition");
    let bw =
        parse("kind = \"bandwidth\"\ndevice = \"eth0\"\nrate = \"1mbit\"\nmatch = { port = 80 }\n")
            .unwrap();
    assert_eq!(bw.kind(), "bandwidth");
    let netem = parse("kind = \"latency\"\nbackend = \"netem\"\ndevice = \"eth0\"\ndelay = \"100ms\"\njitter = \"10ms\"\ncorrelation = \"25%\"\ndistribution = \"normal\"\nloss = \"1%\"\nduplicate = \"1%\"\ncorrupt = \"0.1%\"\nreorder = \"5%\"\nmatch = { dst = \"10.0.0.5\" }\n").unwrap();
    assert!(matches!(netem, FaultSpec::NetemLatency(_)), "{netem:?}");
}

#[test]
fn bad_addresses_point_at_the_value() {
    let e = parse("kind = \"partition\"\npeers = [\"10.0.0.5\", \"10.0.1.7/24\"]\n").unwrap_err();
    assert!(e.contains("line 14, column 9"), "{e}");
    assert!(e.contains("did you mean `10.0.1.0/24`?"), "{e}");
}

#[test]
fn network_faults_say_what_is_missing_or_wrong() {
    let e = parse("kind = \"network-loss\"\nmatch = { port = 1 }\n").unwrap_err();
    assert!(e.contains("network-loss needs `percent`"), "{e}");
    let e = parse("kind = \"network-loss\"\npercent = \"10%\"\nmatch = {}\n").unwrap_err();
    assert!(e.contains("`match` needs at least one of"), "{e}");
    let e =
        parse("kind = \"network-loss\"\npercent = \"10%\"\nmatch = { dport = 1 }\n").unwrap_err();
    assert!(e.contains("unknown field `dport`"), "{e}");
    let e = parse("kind = \"bandwidth\"\ndevice = \"-batch\"\nrate = \"1mbit\"\n").unwrap_err();
    assert!(e.contains("is not a network device name"), "{e}");
    let e = parse("kind = \"bandwidth\"\ndevice = \"eth0\"\nrate = \"1mbit\"\nmatch = { port = 80, direction = \"ingress\" }\n").unwrap_err();
    assert!(e.contains("can only be \"egress\""), "{e}");
    let e = parse("kind = \"partition\"\npeers = [\"10.0.0.5\"]\nrate = \"1mbit\"\n").unwrap_err();
    assert!(
        e.contains("`rate` does not apply to kind `partition`"),
        "{e}"
    );
    let e = parse("kind = \"latency\"\nbackend = \"netem\"\ndevice = \"eth0\"\ndelay = \"10ms\"\ndistribution = \"normal\"\n").unwrap_err();
    assert!(e.contains("need `jitter`"), "{e}");
    let e = parse("kind = \"network-loss\"\npercent = \"10%\"\nmatch = { dst = \"10.0.0.1\", src = \"fd00::1\" }\n").unwrap_err();
    assert!(e.contains("different IP versions"), "{e}");
}
