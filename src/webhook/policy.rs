//! What the webhook lets in beyond a valid signature: the source addresses that may call it
//! (`ALLOWED_SOURCE_CIDRS`) and, per target, the workbooks, worksheets, scenarios and
//! filters a job may name (`ALLOWED_REQUESTS`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use crate::job::{public_scope, DataSource, JobRequest, NamedScope, TableRequest};
use crate::routing::Target;

pub use crate::job::rules::MAX_WORKSHEETS;

/// The workbook the integration exists for: the default allow-list admits it alone.
pub const PLANNED_ORDERS_WORKBOOK: &str = "PlannedOrders Export";

/// An IPv4 or IPv6 network, `203.0.113.0/24` or a bare address (a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0..={width}"))?,
        };
        let cidr = Self { network, prefix };
        // Callers arriving IPv4-mapped are compared as IPv4: such a network would match nobody.
        if let IpAddr::V6(v6) = network {
            if v6.to_ipv4_mapped().is_some() {
                return Err(format!("{text:?} is an IPv4-mapped IPv6 address; write it as IPv4"));
            }
        }
        // A network with host bits set is almost always a typo for another network.
        if cidr.masked(network) != network {
            return Err(format!("{text:?} has host bits set beyond /{prefix}"));
        }
        Ok(cidr)
    }

    fn masked(&self, address: IpAddr) -> IpAddr {
        match address {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        // An IPv4 caller may arrive as an IPv4-mapped IPv6 address.
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
            v4 => v4,
        };
        address.is_ipv4() == self.network.is_ipv4() && self.masked(address) == self.network
    }
}

/// `ALLOWED_SOURCE_CIDRS`: comma-separated networks; empty admits any source.
pub fn parse_cidrs(list: &str) -> Result<Vec<Cidr>, String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Cidr::parse).collect()
}

/// A workbook, scenario or filter as an allow-list names it: `"Name"` (the `Public` scope)
/// or `{"name": "…", "scope": "…"}`; `"*"` admits any.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum ScopedName {
    Public(String),
    Scoped { name: String, scope: String },
}

impl ScopedName {
    fn admits(&self, wanted: &NamedScope) -> bool {
        match self {
            Self::Public(name) if name == "*" => true,
            Self::Public(name) => *name == wanted.name && wanted.scope == public_scope(),
            Self::Scoped { name, scope } => *name == wanted.name && *scope == wanted.scope,
        }
    }
}

/// A table bulk export may read: `"Namespace::Name"` (any fields, any filter) or
/// `{"name": "Namespace::Name", "fields": [..], "filters": [..]}`, where a list left out
/// admits any field or filter; `"*"` admits any table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum TableRule {
    Any(String),
    Limited(LimitedTable),
}

/// A misspelt key (`field`, `filter`) must stop the start, not silently admit everything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitedTable {
    name: String,
    #[serde(default)]
    fields: Option<Vec<String>>,
    #[serde(default)]
    filters: Option<Vec<String>>,
}

impl TableRule {
    fn name(&self) -> &str {
        match self {
            Self::Any(name) | Self::Limited(LimitedTable { name, .. }) => name,
        }
    }
}

/// What one target accepts: `workbooks` and/or `tables` (at least one); a list left out
/// admits any value of its field (worksheets are still capped at [`MAX_WORKSHEETS`]), except
/// `tables`, which left out admits no bulk export, and `variables` (name → allowed values,
/// `"*"` any), which left out admits no workbook variable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRule {
    #[serde(default)]
    workbooks: Vec<ScopedName>,
    #[serde(default)]
    tables: Vec<TableRule>,
    #[serde(default)]
    worksheets: Option<Vec<String>>,
    #[serde(default)]
    scenarios: Option<Vec<ScopedName>>,
    /// A job without a filter is always admitted; one with a filter only if it is listed.
    #[serde(default)]
    filters: Option<Vec<ScopedName>>,
    /// The site groups a job may export; left out, any.
    #[serde(default, rename = "siteGroups")]
    site_groups: Option<Vec<String>>,
    /// The workbook variables a job may set, each with its allowed values (`"*"` any).
    #[serde(default)]
    variables: BTreeMap<String, Vec<String>>,
}

/// Why an authenticated request is refused by the allow-list: a 422 naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct NotAllowed {
    pub field: String,
    pub problem: String,
}

/// `ALLOWED_REQUESTS`: a JSON object from a target (or `"*"`, any target without a rule of
/// its own) to what it accepts. A target's rule replaces `"*"`; they are not merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    rules: BTreeMap<String, TargetRule>,
}

impl Default for AllowList {
    /// The planned-orders workbook (Public) for every target, anything else refused.
    fn default() -> Self {
        let rule = TargetRule {
            workbooks: vec![ScopedName::Public(PLANNED_ORDERS_WORKBOOK.to_owned())],
            tables: Vec::new(),
            worksheets: None,
            scenarios: None,
            filters: None,
            site_groups: None,
            variables: BTreeMap::new(),
        };
        Self { rules: BTreeMap::from([("*".to_owned(), rule)]) }
    }
}

impl AllowList {
    /// Parses the JSON; every key must be `"*"` or one of `targets`, so a typo cannot
    /// silently leave a target on the `"*"` rule.
    pub fn parse(json: &str, targets: &[Target]) -> Result<Self, String> {
        let rules: BTreeMap<String, TargetRule> = serde_json::from_str(json)
            .map_err(|e| format!("is not the expected JSON ({e}); see docs/design.md, Webhook limits"))?;
        for key in rules.keys() {
            if key != "*" && !targets.iter().any(|t| t.as_str() == key) {
                let known: Vec<&str> = targets.iter().map(Target::as_str).collect();
                return Err(format!("names target {key:?}, which is not a target of the routes {known:?}"));
            }
        }
        if rules.is_empty() {
            return Err("has no rule: no request could ever be accepted".to_owned());
        }
        if let Some((key, _)) = rules.iter().find(|(_, rule)| rule.workbooks.is_empty() && rule.tables.is_empty()) {
            return Err(format!("rule {key:?} lists no workbooks and no tables: it could accept nothing"));
        }
        Ok(Self { rules })
    }

    /// Checks the job against its target's rule; `Err` names the first field not allowed.
    pub fn check(&self, target: &Target, request: &JobRequest) -> Result<(), NotAllowed> {
        let refuse = |field: String, problem: String| Err(NotAllowed { field, problem });
        let Some(rule) = self.rules.get(target.as_str()).or_else(|| self.rules.get("*")) else {
            return refuse("fileName".into(), format!("target {target} accepts no request (no ALLOWED_REQUESTS rule)"));
        };
        // The scenario goes to Kinaxis in both modes, so it is checked in both.
        if let Some(allowed) = &rule.scenarios {
            if !allowed.iter().any(|s| s.admits(&request.scenario)) {
                return refuse(
                    "scenario".into(),
                    format!("{} is not allowed for target {target}", describe(&request.scenario)),
                );
            }
        }
        let workbook = match request.source() {
            Some(DataSource::Workbook(workbook)) => workbook,
            Some(DataSource::Table(table)) => return check_table(rule, target, table),
            None => return refuse("workbook".into(), "a request names either a workbook or a table".into()),
        };
        if !rule.workbooks.iter().any(|w| w.admits(workbook)) {
            return refuse("workbook".into(), format!("{} is not allowed for target {target}", describe(workbook)));
        }
        if let Some(allowed) = &rule.worksheets {
            for (i, sheet) in request.worksheets.iter().enumerate() {
                if !allowed.iter().any(|a| a == "*" || a == sheet) {
                    return refuse(
                        format!("worksheets[{i}]"),
                        format!("worksheet {sheet:?} is not allowed for target {target}"),
                    );
                }
            }
        }
        if let (Some(allowed), Some(filter)) = (&rule.filters, &request.filter) {
            if !allowed.iter().any(|f| f.admits(filter)) {
                return refuse("filter".into(), format!("{} is not allowed for target {target}", describe(filter)));
            }
        }
        check_site_group_and_variables(rule, target, request)
    }
}

/// The site group among `siteGroups` (when listed), and each variable listed with its value.
fn check_site_group_and_variables(rule: &TargetRule, target: &Target, request: &JobRequest) -> Result<(), NotAllowed> {
    let refuse = |field: String, problem: String| Err(NotAllowed { field, problem });
    if let Some(allowed) = &rule.site_groups {
        if !allowed.iter().any(|g| g == "*" || *g == request.site_group) {
            return refuse(
                "siteGroup".into(),
                format!("site group {:?} is not allowed for target {target}", request.site_group),
            );
        }
    }
    for (name, value) in &request.variables {
        let Some(values) = rule.variables.get(name) else {
            return refuse(
                format!("variables.{name}"),
                format!("variable {name:?} is not allowed for target {target}"),
            );
        };
        if !values.iter().any(|v| v == "*" || v == value) {
            return refuse(
                format!("variables.{name}"),
                format!("value {value:?} of variable {name:?} is not allowed for target {target}"),
            );
        }
    }
    Ok(())
}

/// A bulk export: the table listed for the target, and its fields and filter if the entry
/// limits them.
fn check_table(rule: &TargetRule, target: &Target, table: &TableRequest) -> Result<(), NotAllowed> {
    let refuse = |field: String, problem: String| Err(NotAllowed { field, problem });
    let qualified = table.qualified_name();
    let Some(entry) = rule.tables.iter().find(|t| t.name() == "*" || t.name() == qualified) else {
        return refuse("table".into(), format!("table {qualified:?} is not allowed for target {target}"));
    };
    if let TableRule::Limited(LimitedTable { fields, filters, .. }) = entry {
        if let Some(allowed) = fields {
            if let Some((i, field)) = table.fields.iter().enumerate().find(|(_, f)| !allowed.contains(f)) {
                return refuse(
                    format!("table.fields[{i}]"),
                    format!("field {field:?} of {qualified} is not allowed for target {target}"),
                );
            }
        }
        if let (Some(allowed), Some(filter)) = (filters, &table.filter) {
            if !allowed.contains(filter) {
                return refuse(
                    "table.filter".into(),
                    format!("this filter of {qualified} is not allowed for target {target}"),
                );
            }
        }
    }
    Ok(())
}

fn describe(named: &NamedScope) -> String {
    format!("{:?} (scope {:?})", named.name, named.scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_and_no_others_in_both_families() {
        let net = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(net.contains(ip("203.0.113.10")) && net.contains(ip("::ffff:203.0.113.200")));
        assert!(!net.contains(ip("203.0.114.1")) && !net.contains(ip("2001:db8::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("198.51.100.7")));
        assert!(Cidr::parse("198.51.100.7").unwrap().contains(ip("198.51.100.7")));
        assert!(!Cidr::parse("198.51.100.7").unwrap().contains(ip("198.51.100.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
    }

    #[test]
    fn malformed_networks_are_refused_naming_the_entry() {
        for bad in ["203.0.113.0/33", "203.0.113.1/24", "example.com", "10.0.0.0/x", "::/129"] {
            assert!(Cidr::parse(bad).unwrap_err().contains(bad), "{bad}");
        }
        assert_eq!(parse_cidrs(" , ").unwrap(), vec![]);
        assert_eq!(parse_cidrs("10.0.0.0/8, 192.0.2.1").unwrap().len(), 2);
    }

    fn request(workbook: &str, scope: &str) -> JobRequest {
        let body = format!(
            r#"{{"fileName":"A-PF","workbook":{{"name":"{workbook}","scope":"{scope}"}},"worksheets":["Planned Orders"]}}"#
        );
        crate::webhook::request::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn a_cidr_with_host_bits_set_is_refused_and_its_network_is_not() {
        for typo in ["10.0.0.1/24", "192.168.1.128/24", "2001:db8::1/64"] {
            assert!(Cidr::parse(typo).unwrap_err().contains("host bits"), "{typo}");
        }
        for network in ["10.0.0.0/24", "192.168.1.128/25", "2001:db8::/64", "10.1.2.3", "0.0.0.0/0"] {
            assert!(Cidr::parse(network).is_ok(), "{network}");
        }
        // It would match nobody: callers arriving IPv4-mapped are compared as IPv4.
        assert!(Cidr::parse("::ffff:10.0.0.0/104").unwrap_err().contains("write it as IPv4"));
    }

    #[test]
    fn a_refusal_names_the_workbook_and_its_scope_as_sent() {
        let refused = AllowList::default().check(&pf2(), &request("Payroll", "Private")).unwrap_err();
        assert_eq!(refused.to_string(), r#"workbook: "Payroll" (scope "Private") is not allowed for target PF2"#);
        let mut scenario_rule = AllowList::default();
        scenario_rule.rules.get_mut("*").unwrap().scenarios = Some(vec![ScopedName::Public("Enterprise Data".into())]);
        let mut what_if = request(PLANNED_ORDERS_WORKBOOK, "Public");
        what_if.scenario = NamedScope { name: "What-if".into(), scope: "Public".into() };
        let refused = scenario_rule.check(&pf2(), &what_if).unwrap_err();
        assert_eq!(refused.to_string(), r#"scenario: "What-if" (scope "Public") is not allowed for target PF2"#);
    }

    fn pf2() -> Target {
        Target::parse("PF2").unwrap()
    }

    #[test]
    fn a_scoped_rule_admits_its_name_in_its_scope_only() {
        let targets = [pf2()];
        let list =
            AllowList::parse(r#"{"*": {"workbooks": [{"name": "WP Orders", "scope": "Team"}]}}"#, &targets).unwrap();
        assert_eq!(list.check(&targets[0], &request("WP Orders", "Team")), Ok(()));
        for (name, scope) in [("WP Orders", "Public"), ("Other", "Team")] {
            assert_eq!(list.check(&targets[0], &request(name, scope)).unwrap_err().field, "workbook", "{name} {scope}");
        }
    }

    #[test]
    fn the_default_admits_the_public_planned_orders_workbook_only() {
        let list = AllowList::default();
        assert_eq!(list.check(&pf2(), &request(PLANNED_ORDERS_WORKBOOK, "Public")), Ok(()));
        assert_eq!(list.check(&pf2(), &request("Payroll", "Public")).unwrap_err().field, "workbook");
        assert_eq!(list.check(&pf2(), &request(PLANNED_ORDERS_WORKBOOK, "Private")).unwrap_err().field, "workbook");
    }

    #[test]
    fn a_target_rule_replaces_the_wildcard_and_each_listed_field_is_checked() {
        let targets = [pf2(), Target::parse("WP2").unwrap()];
        let list = AllowList::parse(
            r#"{"*": {"workbooks": ["PlannedOrders Export"]},
                "WP2": {"workbooks": [{"name": "WP Orders", "scope": "Private"}],
                        "worksheets": ["Planned Orders"], "scenarios": ["Enterprise Data"], "filters": []}}"#,
            &targets,
        )
        .unwrap();
        let wp2 = &targets[1];
        assert_eq!(list.check(wp2, &request("WP Orders", "Private")), Ok(()));
        assert_eq!(list.check(wp2, &request(PLANNED_ORDERS_WORKBOOK, "Public")).unwrap_err().field, "workbook");
        let mut other_sheet = request("WP Orders", "Private");
        other_sheet.worksheets.push("Salaries".into());
        assert_eq!(list.check(wp2, &other_sheet).unwrap_err().field, "worksheets[1]");
        let mut other_scenario = request("WP Orders", "Private");
        other_scenario.scenario.name = "What-if".into();
        assert_eq!(list.check(wp2, &other_scenario).unwrap_err().field, "scenario");
        let mut filtered = request("WP Orders", "Private");
        filtered.filter = Some(NamedScope { name: "Mine".into(), scope: "Public".into() });
        assert_eq!(list.check(wp2, &filtered).unwrap_err().field, "filter");
        // PF2 has no rule of its own: the wildcard, which leaves filters open.
        let mut pf = request(PLANNED_ORDERS_WORKBOOK, "Public");
        pf.filter = Some(NamedScope { name: "Mine".into(), scope: "Public".into() });
        assert_eq!(list.check(&targets[0], &pf), Ok(()));
    }

    #[test]
    fn site_groups_are_admitted_as_listed_and_variables_only_as_listed_with_their_values() {
        let list = AllowList::parse(
            r#"{"*": {"workbooks": ["PlannedOrders Export"], "siteGroups": ["All Sites", "Plant 1000"],
                      "variables": {"Horizon": ["30", "60"], "Note": ["*"]}}}"#,
            &[pf2()],
        )
        .unwrap();
        let mut job = request(PLANNED_ORDERS_WORKBOOK, "Public");
        assert_eq!(list.check(&pf2(), &job), Ok(()));
        job.site_group = "Plant 2000".into();
        assert_eq!(list.check(&pf2(), &job).unwrap_err().field, "siteGroup");
        job.site_group = "Plant 1000".into();
        job.variables = BTreeMap::from([("Horizon".into(), "60".into()), ("Note".into(), "anything".into())]);
        assert_eq!(list.check(&pf2(), &job), Ok(()));
        job.variables.insert("Horizon".into(), "365".into());
        assert_eq!(list.check(&pf2(), &job).unwrap_err().field, "variables.Horizon");
        job.variables = BTreeMap::from([("Site".into(), "1000".into())]);
        assert_eq!(list.check(&pf2(), &job).unwrap_err().field, "variables.Site");
        // Left out: any site group, no variable.
        let mut open = request(PLANNED_ORDERS_WORKBOOK, "Public");
        open.site_group = "Plant 2000".into();
        assert_eq!(AllowList::default().check(&pf2(), &open), Ok(()));
        open.variables = BTreeMap::from([("Horizon".into(), "30".into())]);
        assert_eq!(AllowList::default().check(&pf2(), &open).unwrap_err().field, "variables.Horizon");
    }

    fn table_request(table: &str, fields: &[&str], filter: Option<&str>) -> JobRequest {
        let (namespace, name) = table.split_once("::").unwrap();
        let body = serde_json::json!({"fileName": "A-PF", "table": {"namespace": namespace, "name": name, "fields": fields, "filter": filter}});
        crate::webhook::request::parse(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn tables_are_refused_by_default_and_admitted_only_as_listed_with_their_fields_and_filters() {
        let orders = table_request("Mfg::PlannedOrder", &["Order.Id"], None);
        assert_eq!(AllowList::default().check(&pf2(), &orders).unwrap_err().field, "table");
        let list = AllowList::parse(
            r#"{"*": {"workbooks": ["PlannedOrders Export"],
                      "tables": [{"name": "Mfg::PlannedOrder", "fields": ["Order.Id", "Quantity"], "filters": ["Quantity > 0"]}]},
                "WP2": {"tables": ["Mfg::Other"]}}"#,
            &[pf2(), Target::parse("WP2").unwrap()],
        )
        .unwrap();
        assert!(list.check(&pf2(), &orders).is_ok());
        assert!(list.check(&pf2(), &table_request("Mfg::PlannedOrder", &["Quantity"], Some("Quantity > 0"))).is_ok());
        let wide = table_request("Mfg::PlannedOrder", &["Order.Id", "Cost"], None);
        assert_eq!(list.check(&pf2(), &wide).unwrap_err().field, "table.fields[1]");
        let filtered = table_request("Mfg::PlannedOrder", &["Order.Id"], Some("true"));
        assert_eq!(list.check(&pf2(), &filtered).unwrap_err().field, "table.filter");
        assert_eq!(list.check(&pf2(), &table_request("Mfg::Other", &["X"], None)).unwrap_err().field, "table");
        let wp2 = Target::parse("WP2").unwrap();
        assert!(list.check(&wp2, &table_request("Mfg::Other", &["Any.Field"], Some("any"))).is_ok());
        // A table job's scenario is checked like a workbook job's.
        let scoped =
            AllowList::parse(r#"{"*": {"tables": ["Mfg::PlannedOrder"], "scenarios": ["Enterprise Data"]}}"#, &[pf2()])
                .unwrap();
        let mut what_if = table_request("Mfg::PlannedOrder", &["Order.Id"], None);
        assert!(scoped.check(&pf2(), &what_if).is_ok());
        what_if.scenario = NamedScope { name: "Secret What-If".into(), scope: "Private".into() };
        assert_eq!(scoped.check(&pf2(), &what_if).unwrap_err().field, "scenario");
        // A misspelt key in a table entry stops the start.
        let typo = AllowList::parse(r#"{"*": {"tables": [{"name": "Mfg::X", "field": ["a"]}]}}"#, &[pf2()]);
        assert!(typo.is_err(), "{typo:?}");
        assert_eq!(list.check(&wp2, &request(PLANNED_ORDERS_WORKBOOK, "Public")).unwrap_err().field, "workbook");
    }

    #[test]
    fn a_target_without_a_rule_and_no_wildcard_accepts_nothing() {
        let list =
            AllowList::parse(r#"{"WP2": {"workbooks": ["*"]}}"#, &[pf2(), Target::parse("WP2").unwrap()]).unwrap();
        assert!(list.check(&pf2(), &request(PLANNED_ORDERS_WORKBOOK, "Public")).is_err());
        assert_eq!(list.check(&Target::parse("WP2").unwrap(), &request("Anything", "Private")), Ok(()));
    }

    #[test]
    fn malformed_allow_lists_are_refused_with_the_reason() {
        let targets = [pf2()];
        assert!(AllowList::parse(r#"{"PF3": {"workbooks": ["W"]}}"#, &targets).unwrap_err().contains("PF3"));
        assert!(AllowList::parse(r#"{"PF2": {}}"#, &targets).unwrap_err().contains("workbooks"));
        assert!(AllowList::parse(r#"{"PF2": {"workbooks": [], "sheets": []}}"#, &targets)
            .unwrap_err()
            .contains("sheets"));
        assert!(AllowList::parse("{}", &targets).is_err());
        assert!(AllowList::parse("PlannedOrders Export", &targets).is_err());
    }
}
