//! Which SAP system a file goes to: exact file-name overrides first, then suffix rules.

use std::fmt;

/// A delivery target such as `PF2`; each has its own SFTP secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Target(String);

impl Target {
    /// Upper-case letters, digits and `_`: the name becomes part of an environment variable.
    pub fn parse(name: &str) -> Result<Self, String> {
        let valid = !name.is_empty()
            && name.len() <= 32
            && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!("target {name:?} must be 1-32 of A-Z 0-9 _"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    Send(Target),
    Refuse,
}

/// The ordered routing rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTable {
    overrides: Vec<(String, RouteAction)>,
    suffixes: Vec<(String, Target)>,
}

impl Default for RoutingTable {
    fn default() -> Self {
        Self::parse("PF=PF2,WP=WP2", "").unwrap_or_else(|_| unreachable!("the default table parses"))
    }
}

impl RoutingTable {
    /// `suffix_rules`: `PF=PF2,WP=WP2`; `overrides`: `Allocations-PF=refuse,Special-WP=PF2`.
    pub fn parse(suffix_rules: &str, overrides: &str) -> Result<Self, String> {
        let mut table = Self { overrides: Vec::new(), suffixes: Vec::new() };
        for (name, action) in pairs(overrides)? {
            let action = if action.eq_ignore_ascii_case("refuse") {
                RouteAction::Refuse
            } else {
                RouteAction::Send(Target::parse(action)?)
            };
            table.overrides.push((name.to_owned(), action));
        }
        for (suffix, target) in pairs(suffix_rules)? {
            if !suffix.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("suffix {suffix:?} must be letters and digits"));
            }
            table.suffixes.push((suffix.to_ascii_uppercase(), Target::parse(target)?));
        }
        if table.suffixes.is_empty() && table.overrides.is_empty() {
            return Err("no routing rule".to_owned());
        }
        Ok(table)
    }

    /// Every target a file can be sent to.
    pub fn targets(&self) -> Vec<Target> {
        let mut all: Vec<Target> = self
            .suffixes
            .iter()
            .map(|(_, t)| t.clone())
            .chain(self.overrides.iter().filter_map(|(_, a)| match a {
                RouteAction::Send(t) => Some(t.clone()),
                RouteAction::Refuse => None,
            }))
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The target for a file name, or why there is none.
    pub fn route(&self, file_name: &str) -> Result<Target, String> {
        if let Some((_, action)) = self.overrides.iter().find(|(name, _)| name == file_name) {
            return match action {
                RouteAction::Send(target) => Ok(target.clone()),
                RouteAction::Refuse => Err(format!("fileName {file_name:?} is excluded by a routing override")),
            };
        }
        let suffix =
            suffix_of(file_name).ok_or_else(|| format!("fileName {file_name:?} has no suffix token to route by"))?;
        self.suffixes
            .iter()
            .find(|(rule, _)| rule.eq_ignore_ascii_case(suffix))
            .map(|(_, target)| target.clone())
            .ok_or_else(|| format!("fileName {file_name:?} ends in {suffix:?}, which no routing rule knows"))
    }
}

/// The webhook's `fileName` without one trailing `.csv` (any case): what routing reads and
/// what file-name templates put in `{fileName}`, so `orders_wp.csv` becomes
/// `orders_wp_20261124060007.csv`, never `orders_wp.csv_20261124060007.csv`.
pub fn file_name_stem(file_name: &str) -> &str {
    match file_name.len().checked_sub(4) {
        Some(cut) if file_name.is_char_boundary(cut) && file_name[cut..].eq_ignore_ascii_case(".csv") => {
            &file_name[..cut]
        }
        _ => file_name,
    }
}

/// The last token of the stem, tokens split on `-`, `_` and `.`; a name of one token has
/// no suffix.
fn suffix_of(file_name: &str) -> Option<&str> {
    let mut tokens = file_name_stem(file_name).split(['-', '_', '.']);
    tokens.next()?;
    tokens.next_back().filter(|token| !token.is_empty())
}

fn pairs(list: &str) -> Result<Vec<(&str, &str)>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| format!("rule {item:?} is not NAME=VALUE"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str) -> Result<String, String> {
        RoutingTable::default().route(name).map(|t| t.to_string())
    }

    #[test]
    fn the_default_table_routes_by_the_last_token_whatever_its_case_or_extension() {
        assert_eq!(route("PlannedOrders-PF").as_deref(), Ok("PF2"));
        assert_eq!(route("orders_wp.csv").as_deref(), Ok("WP2"));
        assert_eq!(route("Orders.PF").as_deref(), Ok("PF2"));
        assert_eq!(route("Orders-pf.CSV").as_deref(), Ok("PF2"));
    }

    #[test]
    fn names_without_a_known_suffix_token_are_refused() {
        assert!(route("Setupf").is_err());
        assert!(route("PF").is_err());
        assert!(route("Orders-XX").is_err());
        assert!(route("Orders-").is_err());
        assert!(route("Orders-PF.csv.csv").is_err());
    }

    #[test]
    fn an_override_sends_a_named_file_elsewhere_or_refuses_it_before_suffix_rules() {
        let table = RoutingTable::parse("PF=PF2,WP=WP2", "Allocations-PF=refuse,Special-WP=PF2").unwrap();
        assert!(table.route("Allocations-PF").unwrap_err().contains("override"));
        assert_eq!(table.route("Special-WP").unwrap().as_str(), "PF2");
        assert_eq!(table.route("Other-PF").unwrap().as_str(), "PF2");
        assert_eq!(table.targets().len(), 2);
    }

    #[test]
    fn the_stem_drops_one_trailing_csv_whatever_its_case_and_nothing_else() {
        assert_eq!(file_name_stem("orders_wp.csv"), "orders_wp");
        assert_eq!(file_name_stem("orders_wp.CSV"), "orders_wp");
        assert_eq!(file_name_stem("orders_wp.csv.csv"), "orders_wp.csv");
        assert_eq!(file_name_stem("orders_wp"), "orders_wp");
        assert_eq!(file_name_stem(".csv"), "");
        assert_eq!(file_name_stem("Grüß.csv"), "Grüß");
    }

    #[test]
    fn malformed_rules_are_refused_with_the_rule_named() {
        assert!(RoutingTable::parse("PF", "").unwrap_err().contains("\"PF\""));
        assert!(RoutingTable::parse("PF=pf2", "").is_err());
        assert!(RoutingTable::parse("", "").is_err());
    }
}
