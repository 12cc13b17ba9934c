//! Keeps `docs/PROTOCOL.md` and the tests in step: every rule the specification defines is cited
//! by a test of this crate (or is listed below with the crate that owns it), and every rule a test
//! cites exists.

use std::collections::BTreeSet;

/// Rules whose behaviour lives outside the protocol crate, and where they are tested instead.
const OWNED_ELSEWHERE: [(&str, &str); 7] = [
    (
        "TR-4",
        "drivers: WebSocket-level ping frames are ignored by client/ and wasm/",
    ),
    ("TR-5", "deployment advice: wss:// in production"),
    ("CU-1", "reference server: per-user mailboxes (server/)"),
    ("CU-2", "reference server: per-user mailboxes (server/)"),
    ("CU-3", "reference server: per-user mailboxes (server/)"),
    ("CU-4", "reference server: per-user mailboxes (server/)"),
    ("CU-5", "reference server: per-user mailboxes (server/)"),
];

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
    for entry in std::fs::read_dir(format!("{root}/tests")).expect("tests folder") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("test file");
            for line in text.lines().filter(|l| l.trim_start().starts_with("/// [")) {
                cited.extend(rule_ids(line, false));
            }
        }
    }
    let elsewhere: BTreeSet<String> = OWNED_ELSEWHERE
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
