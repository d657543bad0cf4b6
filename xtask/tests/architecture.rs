//! ARCHITECTURE.md's code map is the rule: every workspace crate has a row, and no crate depends (directly,
//! or through other workspace crates) on what its "must not depend on" column names. Dependencies are read
//! from `cargo metadata`; optional dependencies count only where a feature switched on along the path enables
//! them, as in a build of that crate alone.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// (crate, forbidden names) from the code map table.
fn code_map() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(test_support::root().join("ARCHITECTURE.md")).unwrap();
    let backticked = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_string).collect() };
    let mut map = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `crate` | job | must not depend on |
        let name = backticked(cells[1]).remove(0);
        map.insert(name, backticked(cells[cells.len() - 2]).into_iter().collect());
    }
    map
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(test_support::root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The workspace members as `cargo metadata` describes them.
fn workspace() -> Workspace {
    let meta = metadata();
    let members = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p.clone()))
        .collect();
    Workspace { members }
}

struct Workspace {
    /// Member name -> its package entry.
    members: BTreeMap<String, Value>,
}

impl Workspace {
    /// Optional dependencies and features that `features` of `package` switch on, expanded.
    fn enabled(&self, package: &str, features: &BTreeSet<String>) -> (BTreeSet<String>, BTreeSet<String>) {
        let table = &self.members[package]["features"];
        let (mut deps, mut seen) = (BTreeSet::new(), BTreeSet::new());
        let mut todo: Vec<String> = features.iter().cloned().collect();
        while let Some(f) = todo.pop() {
            if !seen.insert(f.clone()) {
                continue;
            }
            for entry in table[&f].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if let Some(dep) = entry.strip_prefix("dep:") {
                    deps.insert(dep.to_string());
                } else if let Some((dep, _)) = entry.split_once('/') {
                    if !dep.ends_with('?') {
                        deps.insert(dep.to_string());
                    }
                } else {
                    todo.push(entry.to_string());
                }
            }
        }
        (deps, seen)
    }

    /// Every crate `package` depends on when built alone, with the path that leads to each.
    fn reached(&self, package: &str) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        self.reach(package, &BTreeSet::from(["default".to_string()]), &mut out, &[package.to_string()]);
        out
    }

    /// Every crate `package` depends on for a normal build with `features`, following workspace crates.
    fn reach(
        &self,
        package: &str,
        features: &BTreeSet<String>,
        out: &mut BTreeMap<String, Vec<String>>,
        path: &[String],
    ) {
        let (optional_on, _) = self.enabled(package, features);
        for dep in self.members[package]["dependencies"].as_array().unwrap() {
            if !dep["kind"].is_null() && dep["kind"] != "build" {
                continue; // dev-dependencies are not part of the crate
            }
            let name = dep["rename"].as_str().or(dep["name"].as_str()).unwrap().to_string();
            if dep["optional"] == true && !optional_on.contains(&name) {
                continue;
            }
            let mut via = path.to_vec();
            via.push(name.clone());
            out.entry(name.clone()).or_insert_with(|| via.clone());
            if self.members.contains_key(&name) {
                let mut wanted: BTreeSet<String> =
                    dep["features"].as_array().unwrap().iter().filter_map(|f| f.as_str().map(str::to_string)).collect();
                if dep["uses_default_features"] == true {
                    wanted.insert("default".into());
                }
                self.reach(&name, &wanted, out, &via);
            }
        }
    }
}

#[test]
fn no_crate_depends_on_what_architecture_md_forbids() {
    let ws = workspace();
    let map = code_map();
    // Every crate has a row, and every row is a crate.
    let names: BTreeSet<&String> = ws.members.keys().collect();
    assert_eq!(map.keys().collect::<BTreeSet<_>>(), names, "ARCHITECTURE.md's code map and the workspace differ");
    // A forbidden name must be something a crate could depend on, or the rule checks nothing.
    let known: BTreeSet<String> = ws
        .members
        .values()
        .flat_map(|p| p["dependencies"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap().to_string()))
        .chain(ws.members.keys().cloned())
        .collect();
    let mut broken = Vec::new();
    for (krate, forbidden) in &map {
        for f in forbidden.iter().filter(|f| !known.contains(*f)) {
            broken.push(format!("{krate}: '{f}' is not a crate of this workspace or any dependency of one"));
        }
        let reached = ws.reached(krate);
        for f in forbidden {
            if let Some(path) = reached.get(f) {
                broken.push(format!("{krate} must not depend on {f}, but does: {}", path.join(" -> ")));
            }
        }
    }
    // "nothing depends on it" for xtask.
    for krate in map.keys() {
        if let Some(path) = ws.reached(krate).get("xtask") {
            broken.push(format!("nothing may depend on xtask: {}", path.join(" -> ")));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_check_sees_edges_through_other_crates_and_through_features() {
    // runtime's `cuda` feature is what brings cudarc in: runtime alone has no cudarc, calibrate (runtime
    // with cuda) has it, and evaluate reaches it through calibrate; quantizer reaches ort through runtime.
    let ws = workspace();
    let reached = |krate: &str| ws.reached(krate);
    assert!(!reached("runtime").contains_key("cudarc"), "{:?}", reached("runtime").get("cudarc"));
    assert!(reached("calibrate").contains_key("cudarc"), "calibrate switches runtime's cuda on");
    assert!(reached("quantizer").contains_key("ort"), "through runtime");
    assert!(reached("evaluate").contains_key("cudarc"), "through calibrate");
    assert_eq!(reached("evaluate")["histograms"][0], "evaluate");
}

#[test]
fn every_crate_has_a_paragraph_in_the_code_map() {
    let text = std::fs::read_to_string(test_support::root().join("ARCHITECTURE.md")).unwrap();
    for krate in code_map().keys() {
        assert!(text.contains(&format!("### `{krate}`")), "ARCHITECTURE.md has no paragraph for {krate}");
    }
}
