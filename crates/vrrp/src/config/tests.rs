use super::keepalived::parse;
use super::*;

fn p(text: &str) -> Result<(Config, Vec<Warning>), ConfigError> {
    parse(text, Path::new("/etc/keepalived/keepalived.conf"))
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples").join(name)
}

#[test]
fn example_files_load_and_agree() {
    let k = load(&example("vrrp-keepalived.conf")).unwrap();
    assert!(k.warnings.is_empty(), "{:?}", k.warnings);
    let t = load(&example("vrrp.toml")).unwrap();
    let (ki, ti) = (&k.config.instances[0], &t.config.instances[0]);
    assert_eq!(ki.name, "VI_MGMT");
    assert_eq!(ki.vrid, 50);
    assert_eq!(ki.priority, 150);
    assert_eq!(ki.auth_pass.as_deref(), Some("rempart1"));
    assert_eq!(ki.virtual_ipaddress, ti.virtual_ipaddress);
    assert_eq!(ki.virtual_ipaddress[0].to_string(), "192.168.50.50/24");
    assert_eq!(ki.track_script, ti.track_script);
    assert_eq!(k.config.scripts[0], {
        let mut s = t.config.scripts[0].clone();
        s.loc = k.config.scripts[0].loc.clone();
        s
    });
    assert_eq!(ti.advert_int, Duration::from_millis(100));
    assert_eq!(t.config.global.vrrp_version, 3);
    assert_eq!(k.config.global.vrrp_version, 2);
    assert!(k.config.global.enable_script_security);
}

#[test]
fn lab_drill_examples_load() {
    for (f, prio) in [("vrrp-lab-main.conf", 150), ("vrrp-lab-backup.conf", 100)] {
        let l = load(&example(f)).unwrap();
        assert!(l.warnings.is_empty(), "{f}: {:?}", l.warnings);
        let i = &l.config.instances[0];
        assert_eq!(i.priority, prio);
        assert_eq!(i.interface, "mgmt");
        assert_eq!(i.virtual_ipaddress[0].to_string(), "192.168.50.50/24");
        assert_eq!(i.effective_version(&l.config.global), 3);
    }
}

#[test]
fn full_instance() {
    let (c, w) = p(r#"
global_defs {
  router_id r1   # comment
  vrrp_version 3
}
vrrp_script chk { script "/bin/check --x" 
  interval 0.5
  weight -20
  fall 3
}
vrrp_instance VI_1
{
  state MASTER
  interface eth0
  virtual_router_id 51
  priority 150
  advert_int 0.05
  nopreempt
  preempt_delay 10
  accept
  unicast_src_ip 10.0.0.1
  unicast_peer {
    10.0.0.2
    10.0.0.3
  }
  virtual_ipaddress {
    10.0.0.100
    10.0.1.100/24
  }
  track_interface {
    eth1 weight -30
    eth2
  }
  track_script {
    chk weight -10
  }
  notify_master "/bin/n master"
  notify /bin/notify
  garp_master_delay 2
  garp_master_repeat 3
  garp_master_refresh 60
}
vrrp_sync_group G {
  group {
    VI_1
  }
}
"#)
    .unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    let i = &c.instances[0];
    assert_eq!(i.state.as_deref(), Some("MASTER"));
    assert_eq!(i.advert_int, Duration::from_millis(50));
    assert!(!i.preempt);
    assert_eq!(i.preempt_delay, Duration::from_secs(10));
    assert!(i.accept);
    assert_eq!(i.unicast_peer.len(), 2);
    assert_eq!(i.virtual_ipaddress[0].prefix, 32);
    assert_eq!(i.virtual_ipaddress[1].prefix, 24);
    assert_eq!(i.track_interface[0].weight, Some(-30));
    assert_eq!(i.track_interface[1].weight, None);
    assert_eq!(i.track_script[0].weight, Some(-10));
    assert_eq!(i.notify_master.as_deref(), Some("/bin/n master"));
    assert_eq!(i.garp_master_refresh, Some(Duration::from_secs(60)));
    assert_eq!(c.scripts[0].script, "/bin/check --x");
    assert_eq!(c.scripts[0].fall, 3);
    assert_eq!(c.sync_groups[0].group, vec!["VI_1".to_string()]);
    assert_eq!(i.loc.as_ref().unwrap().line, 11);
}

#[test]
fn harmless_keepalived_keywords_are_warnings_with_file_and_line() {
    let (_, w) = p("global_defs {\n  notification_email { a@b }\n  smtp_server 10.0.0.1\n}\n").unwrap();
    assert_eq!(w.len(), 2);
    assert_eq!(
        w[0].to_string(),
        "/etc/keepalived/keepalived.conf:2: notification_email: not supported in global_defs, ignored (it does not \
         change failover)"
    );
    assert!(w.iter().all(|w| w.kind == WarningKind::Ignored), "{w:?}");
    let (problems, warnings) = apply_keywords(w, Keywords::Strict);
    assert!(problems.is_empty());
    assert_eq!(warnings.len(), 2);
}

const MINIMAL: &str = "  interface eth0\n  virtual_router_id 1\n  virtual_ipaddress {\n    10.0.0.1\n  }\n";

/// Issue 14: misspelt keywords and keepalived features that change failover were warnings, so
/// `check-config` and `run` accepted them (`vrrp_instanse` gave "0 instances", OK).
#[test]
fn unknown_and_failover_keywords_are_errors_with_file_line_and_keyword() {
    let text = format!(
        "global_defs {{\n  vrrp_strict\n}}\nvrrp_instanse VI_0 {{\n{MINIMAL}}}\nvrrp_instance VI_1 {{\n{MINIMAL}  priorty 150\n  use_vmac\n  track_process {{\n    p\n  }}\n  virtual_routes {{\n    10.1.0.0/16 via 10.0.0.254\n  }}\n  track_file {{\n    f\n  }}\n}}\ntrack_file f {{\n  file /tmp/f\n}}\n@main priority 150\n"
    );
    let (c, w) = p(&text).unwrap();
    assert_eq!(c.instances.len(), 1);
    let (problems, warnings) = apply_keywords(w.clone(), Keywords::Strict);
    assert!(warnings.is_empty(), "{warnings:?}");
    let got: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let f = "/etc/keepalived/keepalived.conf";
    let failover = "keepalived feature not supported by rempart-vrrp in";
    let lenient = "(--lenient ignores it)";
    assert_eq!(
        got,
        [
            format!("{f}:2: vrrp_strict: {failover} global_defs; it changes failover or what failover does {lenient}"),
            format!("{f}:4: vrrp_instanse: unknown keyword in the top level (did you mean vrrp_instance?) {lenient}"),
            format!("{f}:17: priorty: unknown keyword in vrrp_instance (did you mean priority?) {lenient}"),
            format!("{f}:18: use_vmac: {failover} vrrp_instance; it changes failover or what failover does {lenient}"),
            format!(
                "{f}:19: track_process: {failover} vrrp_instance; it changes failover or what failover does {lenient}"
            ),
            format!(
                "{f}:22: virtual_routes: {failover} vrrp_instance; it changes failover or what failover does {lenient}"
            ),
            format!(
                "{f}:25: track_file: {failover} vrrp_instance; it changes failover or what failover does {lenient}"
            ),
            format!(
                "{f}:29: track_file: {failover} the top level; it changes failover or what failover does {lenient}"
            ),
            format!("{f}:32: @main: keepalived conditional, parameter or sequence syntax is not supported {lenient}"),
        ]
    );
    // --lenient: the same, as warnings that say so.
    let (problems, warnings) = apply_keywords(w, Keywords::Lenient);
    assert!(problems.is_empty());
    assert_eq!(warnings.len(), 9);
    assert!(warnings[2].to_string().ends_with("(did you mean priority?) (ignored: --lenient)"), "{}", warnings[2]);
}

#[test]
fn load_reports_keyword_and_validation_problems_together_and_lenient_loads() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("k.conf");
    std::fs::write(&f, format!("vrrp_instance VI_1 {{\n{MINIMAL}  priorty 150\n  priority 0\n}}\n")).unwrap();
    let e = load(&f).unwrap_err();
    let shown = e.to_string();
    assert!(shown.starts_with("2 problem(s):\n"), "{shown}");
    assert!(shown.contains(&format!("  {}:7: priorty: unknown keyword", f.display())), "{shown}");
    assert!(shown.contains("(vrrp_instance VI_1): priority must be 1..255"), "{shown}");
    std::fs::write(&f, format!("vrrp_instance VI_1 {{\n{MINIMAL}  priorty 150\n}}\n")).unwrap();
    let l = load_with(&f, Keywords::Lenient).unwrap();
    assert_eq!(l.config.instances[0].priority, 100);
    assert_eq!(l.warnings.len(), 1);
    // A file whose only block is misspelt has nothing to run, even when lenient.
    std::fs::write(&f, format!("vrrp_instanse VI_1 {{\n{MINIMAL}}}\n")).unwrap();
    let e = load_with(&f, Keywords::Lenient).unwrap_err();
    assert!(e.to_string().contains("configuration: no vrrp_instance: nothing to run"), "{e}");
}

#[test]
fn mcast_src_ip_is_unicast_src_ip_as_in_keepalived() {
    let (c, w) = p(&format!("vrrp_instance VI_1 {{\n{MINIMAL}  mcast_src_ip 10.0.0.2\n}}\n")).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.instances[0].unicast_src_ip, Some("10.0.0.2".parse().unwrap()));
}

#[test]
fn script_weight_reverse_is_unsupported() {
    let (_, w) = p("vrrp_script s {\n  script /bin/true\n  weight 10 reverse\n}\n").unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].kind, WarningKind::Unsupported);
    assert_eq!(w[0].loc.line, 3);
}

#[test]
fn malformed_is_an_error_with_line_and_column() {
    let e = p("vrrp_instance X {\n  priority abc\n}\n").unwrap_err();
    assert_eq!(e.to_string(), "/etc/keepalived/keepalived.conf:2:12: invalid priority \"abc\"");
    let e = p("vrrp_instance X {\n  priority 1\n").unwrap_err();
    assert_eq!(e.to_string(), "/etc/keepalived/keepalived.conf:1:1: block 'vrrp_instance' is never closed");
    let e = p("global_defs {\n}\n }\n").unwrap_err();
    assert!(e.to_string().starts_with("/etc/keepalived/keepalived.conf:3:2: unexpected '}'"), "{e}");
    let e = p("vrrp_script s {\n script \"/bin/true\n}\n").unwrap_err();
    assert!(e.to_string().contains(":2:9: unterminated"), "{e}");
    let e = p("vrrp_instance X {\n virtual_ipaddress {\n   10.0.0.300\n }\n}\n").unwrap_err();
    assert!(e.to_string().contains(":3:4: invalid address"), "{e}");
    let e = p("vrrp_instance X {\n authentication {\n auth_type AH\n }\n}\n").unwrap_err();
    assert!(e.to_string().contains(":3:12: auth_type AH"), "{e}");
}

#[test]
fn validate_reports_every_problem() {
    let (c, _) = p(r#"
vrrp_instance A {
  interface eth0
  virtual_router_id 0
  advert_int 0.5
  track_script { missing }
}
vrrp_instance B {
  interface eth0
  virtual_router_id 7
  version 3
  advert_int 0.015
  authentication { auth_pass x }
  virtual_ipaddress { 10.0.0.1 }
}
vrrp_instance C {
  interface eth0
  virtual_router_id 7
  version 3
  virtual_ipaddress { 10.0.0.2 }
}
vrrp_sync_group G { group { A Z } }
"#)
    .unwrap();
    let probs = c.validate();
    let text: Vec<String> = probs.iter().map(ToString::to_string).collect();
    let has = |s: &str| text.iter().any(|t| t.contains(s));
    assert!(has(":2 (vrrp_instance A): virtual_router_id must be 1..255"), "{text:#?}");
    assert!(has("(vrrp_instance A): no virtual_ipaddress"));
    assert!(has("(vrrp_instance A): advert_int 500ms must be whole seconds with VRRPv2"));
    assert!(has("(vrrp_instance A): track_script missing is not a vrrp_script"));
    assert!(has("(vrrp_instance B): authentication requires VRRPv2"));
    assert!(has("(vrrp_instance B): advert_int must be a multiple of 10 ms"));
    assert!(has("(vrrp_instance C): virtual_router_id 7 used twice on eth0"));
    assert!(has(":22 (vrrp_sync_group G): member Z is not a vrrp_instance"));
    assert_eq!(probs.len(), 8, "{text:#?}");
    let err = ConfigError::Invalid(probs);
    assert!(err.to_string().starts_with("8 problem(s):"));
}

#[test]
fn include_with_glob() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/a.conf"),
        "vrrp_instance A {\n interface e\n virtual_router_id 1\n virtual_ipaddress { 10.0.0.1 }\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("conf.d/b.conf"),
        "vrrp_instance B {\n interface e\n virtual_router_id 2\n virtual_ipaddress { 10.0.0.2 }\n debug 1\n}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("conf.d/skip.txt"), "garbage {").unwrap();
    let main = dir.path().join("keepalived.conf");
    std::fs::write(&main, "global_defs {\n vrrp_version 3\n}\ninclude conf.d/*.conf\n").unwrap();
    let l = load(&main).unwrap();
    let names: Vec<&str> = l.config.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["A", "B"]);
    assert_eq!(l.warnings.len(), 1);
    assert!(l.warnings[0].to_string().contains("conf.d/b.conf:5:"));
}

#[test]
fn toml_errors_and_unknown_fields() {
    let e = from_toml("[[instance]]\nname = \"x\"\nbogus = 1\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    let e = from_toml("[global\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn virtual_ipaddress_options() {
    let (c, w) = p(r#"
vrrp_instance A {
  interface eth0
  virtual_router_id 1
  virtual_ipaddress {
    10.0.0.5/24 dev eth1 label eth1:vip brd 10.0.0.255 scope link
    10.0.0.6 no_track
  }
}
"#)
    .unwrap();
    let v = &c.instances[0].virtual_ipaddress;
    assert_eq!(v[0].dev.as_deref(), Some("eth1"));
    assert_eq!(v[0].label.as_deref(), Some("eth1:vip"));
    assert_eq!(v[0].brd, Some("10.0.0.255".parse().unwrap()));
    assert_eq!(v[0].scope, 253);
    assert_eq!(v[1].dev, None);
    assert_eq!(v[1].scope, 0);
    // The option we do not act on is a warning naming the line.
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].to_string().contains(":7: virtual_ipaddress option 'no_track'"), "{}", w[0]);
    // Display is the TOML form and parses back.
    let s = v[0].to_string();
    assert_eq!(s, "10.0.0.5/24 brd 10.0.0.255 dev eth1 scope link label eth1:vip");
    assert_eq!(s.parse::<Vip>().unwrap(), v[0]);
    // Errors name line and column.
    let e = p("vrrp_instance X {\n virtual_ipaddress {\n   10.0.0.1 scope bogus\n }\n}\n").unwrap_err();
    assert!(e.to_string().contains(":3:4: invalid scope \"bogus\""), "{e}");
    let e = p("vrrp_instance X {\n virtual_ipaddress {\n   10.0.0.1 dev\n }\n}\n").unwrap_err();
    assert!(e.to_string().contains("'dev' needs a value"), "{e}");
    assert!("fd00::1 label x".parse::<Vip>().is_err());
    assert!("10.0.0.1 frobnicate".parse::<Vip>().is_err());
}

#[test]
fn accept_mode_defaults_to_accept_like_keepalived() {
    let base = "vrrp_instance A {\n interface e\n virtual_router_id 1\n virtual_ipaddress { 10.0.0.1 }\n";
    let (c, _) = p(&format!("{base}}}\n")).unwrap();
    assert!(c.instances[0].accept);
    let (c, _) = p(&format!("{base} no_accept\n}}\n")).unwrap();
    assert!(!c.instances[0].accept);
    let t = from_toml(
        "[[instance]]\nname = \"A\"\ninterface = \"e\"\nvrid = 1\nvirtual-ipaddress = [\"10.0.0.1\"]\n",
        std::path::Path::new("x.toml"),
    )
    .unwrap();
    assert!(t.instances[0].accept);
}
