//! Partner groups: named sets of countries.

use std::collections::BTreeSet;
use std::fmt;

use super::{CountryCode, FieldError, Invalid};

/// `[A-Z][A-Z0-9_]{3,63}`: never three letters, so it cannot collide with a
/// country code.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);

impl GroupName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bytes = s.as_bytes();
        let ok = (4..=64).contains(&bytes.len())
            && bytes[0].is_ascii_uppercase()
            && bytes[1..]
                .iter()
                .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(GroupName(s.to_owned()))
        } else {
            Err(Invalid(format!(
                "{s:?} is not a group name: expected an upper-case letter, then 3 to 63 of A-Z, 0-9, _"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A named set of countries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerGroup {
    pub name: GroupName,
    /// At least one member; never the world.
    pub members: BTreeSet<CountryCode>,
    pub description: String,
}

impl PartnerGroup {
    pub const MAX_DESCRIPTION_CHARS: usize = 500;

    /// A group from its parts as a caller gives them, reporting every bad
    /// field (`name`, `members[2]`, `description`).
    pub fn parse(name: &str, members: &[String], description: &str) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut fail = |field: String, reason: Invalid| errors.push(FieldError { field, reason });
        let name = GroupName::parse(name).map_err(|e| fail("name".into(), e)).ok();
        if members.is_empty() {
            fail(
                "members".into(),
                Invalid::new("a group needs at least one member"),
            );
        }
        let mut set = BTreeSet::new();
        for (i, m) in members.iter().enumerate() {
            match CountryCode::parse_country(m) {
                Ok(c) if !set.insert(c) => {
                    fail(format!("members[{i}]"), Invalid(format!("{m} is listed twice")))
                }
                Ok(_) => {}
                Err(e) => fail(format!("members[{i}]"), e),
            }
        }
        if description.chars().count() > Self::MAX_DESCRIPTION_CHARS {
            fail(
                "description".into(),
                Invalid(format!(
                    "description is longer than {} characters",
                    Self::MAX_DESCRIPTION_CHARS
                )),
            );
        }
        match name {
            Some(name) if errors.is_empty() => Ok(PartnerGroup {
                name,
                members: set,
                description: description.to_owned(),
            }),
            _ => Err(errors),
        }
    }

    /// The group built in on first start.
    pub fn central_asia() -> Self {
        let members = ["KAZ", "KGZ", "TJK", "TKM", "UZB"]
            .into_iter()
            .filter_map(|c| CountryCode::parse_country(c).ok())
            .collect();
        PartnerGroup {
            name: GroupName("CENTRAL_ASIA".to_owned()),
            members,
            description: "The five Central Asian countries: Kazakhstan, Kyrgyzstan, Tajikistan, \
                          Turkmenistan, Uzbekistan"
                .to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names() {
        assert!(GroupName::parse("CENTRAL_ASIA").is_ok());
        assert!(GroupName::parse("EU27").is_ok());
        for bad in [
            "ABC",
            "EU",
            "central_asia",
            "_ABCD",
            "1ABC",
            "AB-CD",
            &"A".repeat(65),
        ] {
            assert!(GroupName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_group_reports_every_bad_part() {
        let members = ["KAZ", "XX", "KAZ", "WLD"].map(String::from);
        let errors = PartnerGroup::parse("asia", &members, &"x".repeat(501)).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["name", "members[1]", "members[2]", "members[3]", "description"]
        );
        assert!(PartnerGroup::parse("CASPIAN", &[], "").is_err());
        let ok = PartnerGroup::parse("CASPIAN", &["TKM".into(), "KAZ".into()], "").unwrap();
        assert_eq!(ok.members.len(), 2);
    }

    #[test]
    fn central_asia_has_five_members() {
        assert_eq!(PartnerGroup::central_asia().members.len(), 5);
    }
}
