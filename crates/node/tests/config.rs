//! `node.toml` and `witness.toml`: the documented examples load; every error names the file,
//! the line and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use node::config::{MountMethod, NodeConfig, OnNoQuorum, ServiceKind, VrrpSource, WitnessFile};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples")
}

/// A valid file (inline VRRP, resource by file) to break line by line.
fn base() -> String {
    format!(
        r#"node = "main"

[vrrp]
[[vrrp.instance]]
name = "VI_1"
interface = "eth0"
vrid = 51
virtual-ipaddress = ["192.168.50.50/24"]

[[resource]]
config = "{}"

[[mount]]
resource = "r0"
device = "/dev/nbd0"
fs-type = "ext4"
mount-point = "/srv/ldap"

[[service]]
unit = "slapd.service"

[witness]
address = "192.168.50.30:7790"
secret-file = "w.secret"
"#,
        examples().join("repl-r0.toml").display()
    )
}

fn err(text: &str) -> String {
    match NodeConfig::parse(Path::new("/etc/rempart/node.toml"), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_documented_example_loads() {
    let c = NodeConfig::load(&examples().join("node.toml")).unwrap();
    assert_eq!(c.node, "main");
    assert_eq!(c.vrrp_source, VrrpSource::File(examples().join("vrrp-lab-main.conf")));
    assert_eq!(c.vrrp.instances[0].name, "VI_MGMT");
    assert_eq!(c.resources[0].resource.name, "r0");
    assert_eq!(c.mounts[0].method, MountMethod::KernelNbd);
    assert_eq!(c.mounts[0].options, vec!["noatime".to_string()]);
    assert_eq!(c.services[0].kind, ServiceKind::Unit("slapd.service".into()));
    assert_eq!(c.backup.as_ref().unwrap().every, Duration::from_secs(3600));
    assert_eq!(c.witness.ttl, Duration::from_secs(3));
    assert_eq!(c.witness.on_no_quorum, OnNoQuorum::SuspendIo);
    assert_eq!(c.witness.secret_file, examples().join("witness.secret"));
    assert_eq!(c.timeouts.step_down, Duration::from_secs(1));
}

#[test]
fn the_documented_witness_example_loads() {
    let w = WitnessFile::load(&examples().join("witness.toml")).unwrap();
    assert_eq!(w.max_ttl, Duration::from_secs(10));
    assert_eq!(w.startup_grace, w.max_ttl);
    assert_eq!(w.listen.port(), 7790);
}

#[test]
fn the_base_file_is_valid() {
    let c = NodeConfig::parse(Path::new("/etc/rempart/node.toml"), &base()).unwrap();
    assert_eq!(c.vrrp_source, VrrpSource::Inline);
    assert_eq!(c.witness.secret_file, Path::new("/etc/rempart/w.secret"));
}

#[test]
fn an_unknown_key_names_file_line_and_key() {
    let text = base().replace("secret-file = \"w.secret\"", "secret-file = \"w.secret\"\nttll = 3.0");
    let e = err(&text);
    assert!(e.starts_with("/etc/rempart/node.toml:25: witness.ttll: unknown field `ttll`"), "{e}");
}

#[test]
fn an_unknown_key_in_a_reused_section_is_refused_too() {
    let text = base().replace("vrid = 51", "vrid = 51\npriorty = 100");
    let e = err(&text);
    assert!(e.starts_with("/etc/rempart/node.toml:8: vrrp.instance.priorty: unknown field `priorty`"), "{e}");
}

#[test]
fn a_bad_value_names_file_line_and_key() {
    let text = base() + "on-no-quorum = \"panic\"\n";
    let e = err(&text);
    assert!(e.starts_with("/etc/rempart/node.toml:25: witness.on-no-quorum: \"panic\": use"), "{e}");
    let text = base() + "ttl = \"3s\"\n";
    let e = err(&text);
    assert!(e.starts_with("/etc/rempart/node.toml:25: witness.ttl: invalid type: string"), "{e}");
    let text = base()
        .replace("method = ", "")
        .replace("mount-point = \"/srv/ldap\"", "mount-point = \"srv\"\nmethod = \"nfs\"");
    let e = err(&text);
    assert!(e.contains("/etc/rempart/node.toml:17: mount[0].mount-point: srv is not an absolute path"), "{e}");
    assert!(
        e.contains("/etc/rempart/node.toml:18: mount[0].method: \"nfs\": use \"kernel-nbd\" or \"nbdfuse\""),
        "{e}"
    );
    assert!(e.starts_with("2 problems:"), "every problem at once: {e}");
}

#[test]
fn a_missing_section_is_named() {
    let text = base();
    let cut = text.find("[witness]").unwrap();
    let e = err(&text[..cut]);
    assert!(e.starts_with("/etc/rempart/node.toml: witness: missing"), "{e}");
    let e = err(&text.replace("[[resource]]\nconfig", "[[mountain]]\nconfig"));
    assert!(e.contains("mountain"), "{e}");
}

#[test]
fn a_missing_key_in_a_section_names_the_section_line() {
    let e = err(&base().replace("address = \"192.168.50.30:7790\"\n", ""));
    assert!(e.starts_with("/etc/rempart/node.toml:22: witness.address: missing field `address`"), "{e}");
}

#[test]
fn a_bad_keepalived_conf_path_names_the_key_and_the_path() {
    let text = base().replace(
        "[[vrrp.instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\nvirtual-ipaddress = [\"192.168.50.50/24\"]\n",
        "keepalived-conf = \"nowhere/keepalived.conf\"\n",
    );
    let e = err(&text);
    assert!(
        e.starts_with(
            "/etc/rempart/node.toml:4: vrrp.keepalived-conf: cannot read /etc/rempart/nowhere/keepalived.conf"
        ),
        "{e}"
    );
}

#[test]
fn a_broken_keepalived_conf_is_reported_with_its_own_location() {
    let dir = std::env::temp_dir().join(format!("rempart-node-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("keepalived.conf");
    std::fs::write(&conf, "vrrp_instance VI_1 {\n  interface eth0\n  priorty 100\n}\n").unwrap();
    let text = base().replace(
        "[[vrrp.instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\nvirtual-ipaddress = [\"192.168.50.50/24\"]\n",
        &format!("keepalived-conf = \"{}\"\n", conf.display()),
    );
    let e = err(&text);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(e.starts_with("/etc/rempart/node.toml:4: vrrp.keepalived-conf: "), "{e}");
    assert!(e.contains("keepalived.conf:3") && e.contains("priorty"), "the keepalived.conf line is named too: {e}");
}

#[test]
fn cross_checks_name_the_key() {
    let e = err(&base().replace("resource = \"r0\"", "resource = \"r9\""));
    assert!(e.starts_with("/etc/rempart/node.toml:14: mount[0].resource: \"r9\" is not a configured resource"), "{e}");
    let e = err(&base().replace("node = \"main\"", "node = \"elsewhere\""));
    assert!(
        e.contains("/etc/rempart/node.toml:11: resource[0]: this host (elsewhere) is not one of resource r0's nodes"),
        "{e}"
    );
    let e = err(&(base() + "ttl = 1.0\n"));
    assert!(e.starts_with("/etc/rempart/node.toml:25: witness.ttl: 1s does not fit in the lease"), "{e}");
    let e = err(&base().replace("unit = \"slapd.service\"", "start = \"x\""));
    assert!(e.starts_with("/etc/rempart/node.toml:19: service[0]: give unit"), "{e}");
}

#[test]
fn witness_file_errors_name_file_line_and_key() {
    let p = Path::new("/etc/rempart/witness.toml");
    let e = WitnessFile::parse(p, "[witness]\nlisten = \"nowhere\"\nsecret-file = \"s\"\n").unwrap_err().to_string();
    assert!(e.starts_with("/etc/rempart/witness.toml:2: witness.listen: \"nowhere\" is not IP:PORT"), "{e}");
    let e = WitnessFile::parse(
        p,
        "[witness]\nlisten = \"127.0.0.1:1\"\nsecret-file = \"s\"\nmax-ttl = 10.0\nstartup-grace = 1.0\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("/etc/rempart/witness.toml:5: witness.startup-grace:"), "{e}");
    let e = WitnessFile::parse(p, "[witness]\nlisten = \"127.0.0.1:1\"\nsecret = \"s\"\n").unwrap_err().to_string();
    assert!(e.starts_with("/etc/rempart/witness.toml:3: witness.secret: unknown field"), "{e}");
}

#[test]
fn inline_vrrp_instances_without_a_vrrp_header_load() {
    // Valid TOML: `[[vrrp.instance]]` makes the `vrrp` table itself (toml could not span it).
    let text = base().replace("[vrrp]\n", "");
    let c = NodeConfig::parse(Path::new("/etc/rempart/node.toml"), &text).unwrap();
    assert_eq!(c.vrrp.instances.len(), 1);
    assert_eq!(c.vrrp.instances[0].name, "VI_1");
    // Its problems still name the line of the first VRRP header.
    let e = err(&base().replace("[vrrp]\n", "").replace("vrid = 51\n", "vrid = 0\n"));
    assert!(e.starts_with("/etc/rempart/node.toml:3: vrrp.instance instance VI_1: virtual_router_id"), "{e}");
}
