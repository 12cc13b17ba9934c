//! The rules `docs/PROTOCOL.md` defines, by id (`FR-8`): each family's prefix with its highest
//! number (numbers run from 1, with no gaps). A conformance checker uses it to tell a citation of
//! a real rule from a typo; the repository's tests keep it in step with the specification.

/// Each family of rules with the highest number it defines.
pub const RULE_FAMILIES: [(&str, u32); 15] = [
    ("TR", 6),
    ("FR", 12),
    ("HS", 12),
    ("SG", 4),
    ("DL", 13),
    ("OB", 3),
    ("FC", 3),
    ("RS", 9),
    ("CU", 5),
    ("HB", 5),
    ("GA", 6),
    ("RC", 6),
    ("SE", 6),
    ("PB", 4),
    ("AP", 4),
];

/// Whether `id` (such as `FR-8`) names a rule of the specification.
pub fn rule_exists(id: &str) -> bool {
    let Some((prefix, number)) = id.split_once('-') else {
        return false;
    };
    let Ok(number) = number.parse::<u32>() else {
        return false;
    };
    RULE_FAMILIES
        .iter()
        .any(|(known, highest)| *known == prefix && (1..=*highest).contains(&number))
}
