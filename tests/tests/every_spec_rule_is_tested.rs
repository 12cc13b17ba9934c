//! Keeps `docs/PROTOCOL.md` and the tests in step: every rule the specification defines is cited
//! by a test of the protocol crate, the hub or the reference server (or is listed below with why
//! not), and every rule a test cites exists. It reads the whole repository, so it lives here, in
//! the repository's own suite, rather than in a published crate.

use std::collections::BTreeSet;

/// Rules no automated test can show, and why.
const NOT_TESTABLE_HERE: [(&str, &str); 2] = [
    (
        "TR-4",
        "drivers: WebSocket-level ping frames carry no readyws meaning",
    ),
    ("TR-5", "deployment advice: wss:// in production"),
];

/// The test folders whose citations count: the protocol crate's, the hub's (which owns the custody
/// rules, §9) and the reference server's.
const TEST_FOLDERS: [&str; 3] = ["../protocol/tests", "../hub/tests", "../server/tests"];

/// Sources whose `#[cfg(test)]` module holds unit tests that count too: rules whose interleavings
/// only a test of the state itself can set up.
const UNIT_TESTED: [&str; 1] = ["../hub/src/record.rs"];

/// Every `[AB-12]`-shaped id in `text`, bracket included so that prose mentions are not counted.
fn rule_ids(text: &str, defined_only: bool) -> BTreeSet<String> {
    let pattern_start = if defined_only { "**[" } else { "[" };
    let mut ids = BTreeSet::new();
    for (index, _) in text.match_indices(pattern_start) {
        let rest = &text[index + pattern_start.len()..];
        let Some(end) = rest.find(']') else { continue };
        let candidate = &rest[..end];
        let mut parts = candidate.splitn(2, '-');
        let (Some(prefix), Some(number)) = (parts.next(), parts.next()) else {
            continue;
        };
        let is_rule = prefix.len() == 2
            && prefix.chars().all(|c| c.is_ascii_uppercase())
            && !number.is_empty()
            && number.chars().all(|c| c.is_ascii_digit());
        if is_rule {
            ids.insert(candidate.to_owned());
        }
    }
    ids
}

#[test]
fn every_rule_in_the_specification_is_cited_by_a_test() {
    let root = env!("CARGO_MANIFEST_DIR");
    let spec = std::fs::read_to_string(format!("{root}/../docs/PROTOCOL.md")).expect("the spec");
    let defined = rule_ids(&spec, true);
    assert!(
        defined.len() > 60,
        "the spec defines its rules as **[XX-n]**: {defined:?}"
    );

    let mut cited = BTreeSet::new();
    let entries = TEST_FOLDERS
        .iter()
        .flat_map(|folder| std::fs::read_dir(format!("{root}/{folder}")).expect("tests folder"));
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("test file");
            for line in text.lines().filter(|l| l.trim_start().starts_with("/// [")) {
                cited.extend(rule_ids(line, false));
            }
        }
    }
    for source in UNIT_TESTED {
        let text = std::fs::read_to_string(format!("{root}/{source}")).expect("source file");
        let Some((_, tests)) = text.split_once("#[cfg(test)]") else {
            panic!("{source} has no #[cfg(test)] module");
        };
        for line in tests
            .lines()
            .filter(|l| l.trim_start().starts_with("/// ["))
        {
            cited.extend(rule_ids(line, false));
        }
    }
    let elsewhere: BTreeSet<String> = NOT_TESTABLE_HERE
        .iter()
        .map(|(id, _)| (*id).to_owned())
        .collect();
    let untested: Vec<_> = defined
        .difference(&cited)
        .filter(|id| !elsewhere.contains(*id))
        .collect();
    assert!(untested.is_empty(), "rules no test cites: {untested:?}");
    let unknown: Vec<_> = cited.difference(&defined).collect();
    assert!(
        unknown.is_empty(),
        "tests cite rules the spec does not define: {unknown:?}"
    );
    let stale: Vec<_> = elsewhere.difference(&defined).collect();
    assert!(
        stale.is_empty(),
        "rules listed as owned elsewhere that the spec lacks: {stale:?}"
    );
}

/// `readyws_protocol::rules::RULE_FAMILIES`, which the conformance checker reads, names exactly
/// the families the specification defines, each with its highest number.
#[test]
fn the_rule_table_is_the_specs() {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md"))
        .expect("the spec");
    let mut highest: std::collections::BTreeMap<String, u32> = Default::default();
    for defined in spec.split("**[").skip(1) {
        let Some((id, _)) = defined.split_once("]**") else {
            continue;
        };
        let Some((prefix, number)) = id.split_once('-') else {
            continue;
        };
        let Ok(number) = number.parse::<u32>() else {
            continue;
        };
        let entry = highest.entry(prefix.to_owned()).or_default();
        *entry = (*entry).max(number);
    }
    let table: std::collections::BTreeMap<String, u32> = readyws_protocol::rules::RULE_FAMILIES
        .iter()
        .map(|(prefix, number)| ((*prefix).to_owned(), *number))
        .collect();
    assert_eq!(table, highest);
}
