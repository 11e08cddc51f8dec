//! The contract between `template.yaml` and the code, read from both sides: the alarms
//! watch only metrics and dimension sets the code emits, every alarm can reach a person and
//! tell them when it is over, and every variable the code requires is set on its function.
//! `cfn-lint` and `sam validate` check CloudFormation's rules; these are ours.

use std::collections::{BTreeMap, BTreeSet};

use maestro_relay::config::{WebhookConfig, WorkerConfig};
use maestro_relay::routing::RoutingTable;
use maestro_relay::telemetry::{DIMENSION_SETS, NAMESPACE, WEBHOOK_METRICS, WORKER_METRICS};
use serde_norway::Value;

use crate::helpers::ROOT;

fn template() -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/template.yaml")).expect("template.yaml");
    serde_norway::from_str(&text).expect("template.yaml is YAML")
}

fn resources(template: &Value) -> Vec<(String, &Value)> {
    template["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .map(|(name, resource)| (name.as_str().expect("resource name").to_owned(), resource))
        .collect()
}

fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
    resources(template).into_iter().filter(|(_, r)| r["Type"].as_str() == Some(kind)).collect()
}

/// `name` of `!Ref name` or `{Ref: name}`.
fn ref_name(value: &Value) -> Option<&str> {
    match value {
        Value::Tagged(tagged) if tagged.tag == "Ref" => tagged.value.as_str(),
        Value::Mapping(map) if map.len() == 1 => map.get("Ref").and_then(Value::as_str),
        _ => None,
    }
}

/// The text of a plain string or of `!Sub "text"` (placeholders left as they are).
fn text(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Tagged(tagged) if tagged.tag == "Sub" => tagged.value.as_str(),
        _ => None,
    }
}

/// Resolves `!FindInMap [map, key, field]` against the template's Mappings; a scalar as is.
fn scalar(template: &Value, value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Tagged(tagged) if tagged.tag == "FindInMap" => {
            let path: Vec<&str> = tagged.value.as_sequence()?.iter().filter_map(Value::as_str).collect();
            let [map, key, field] = path[..] else { return None };
            scalar(template, &template["Mappings"][map][key][field])
        }
        _ => None,
    }
}

/// One metric an alarm watches (a plain alarm has one, a metric-math alarm several).
struct Watched<'a> {
    alarm: String,
    namespace: &'a Value,
    name: &'a str,
    dimensions: BTreeMap<String, &'a Value>,
}

fn dimensions(list: &Value) -> BTreeMap<String, &Value> {
    list.as_sequence()
        .map(|dims| {
            dims.iter().map(|d| (d["Name"].as_str().expect("dimension Name").to_owned(), &d["Value"])).collect()
        })
        .unwrap_or_default()
}

fn watched_metrics(template: &Value) -> Vec<Watched<'_>> {
    let mut all = Vec::new();
    for (alarm, resource) in of_type(template, "AWS::CloudWatch::Alarm") {
        let props = &resource["Properties"];
        if let Some(name) = props["MetricName"].as_str() {
            all.push(Watched {
                alarm: alarm.clone(),
                namespace: &props["Namespace"],
                name,
                dimensions: dimensions(&props["Dimensions"]),
            });
        }
        for query in props["Metrics"].as_sequence().into_iter().flatten() {
            let metric = &query["MetricStat"]["Metric"];
            if let Some(name) = metric["MetricName"].as_str() {
                all.push(Watched {
                    alarm: alarm.clone(),
                    namespace: &metric["Namespace"],
                    name,
                    dimensions: dimensions(&metric["Dimensions"]),
                });
            }
        }
    }
    all
}

fn assert_none(problems: Vec<String>) {
    assert!(problems.is_empty(), "template.yaml breaks the contract:\n  {}", problems.join("\n  "));
}

/// The targets the template's default routes lead to.
fn default_targets(template: &Value) -> Vec<String> {
    let routes = template["Parameters"]["Routes"]["Default"].as_str().unwrap_or_default();
    let overrides = template["Parameters"]["RouteOverrides"]["Default"].as_str().unwrap_or_default();
    let table = RoutingTable::parse(routes, overrides).expect("the Routes/RouteOverrides defaults parse");
    table.targets().iter().map(|t| t.as_str().to_owned()).collect()
}

#[test]
fn every_alarm_notifies_on_alarm_and_on_ok_through_a_topic_of_the_stack() {
    let template = template();
    let topics: BTreeSet<String> = of_type(&template, "AWS::SNS::Topic").into_iter().map(|(n, _)| n).collect();
    let alarms = of_type(&template, "AWS::CloudWatch::Alarm");
    assert!(alarms.len() >= 10, "the template lost its alarms: {}", alarms.len());
    let mut problems = Vec::new();
    for (alarm, resource) in alarms {
        for key in ["AlarmActions", "OKActions"] {
            let actions = resource["Properties"][key].as_sequence().map(Vec::as_slice).unwrap_or_default();
            if actions.is_empty() {
                problems.push(format!("{alarm}: no {key}"));
            }
            for action in actions {
                if !ref_name(action).is_some_and(|t| topics.contains(t)) {
                    problems
                        .push(format!("{alarm}: {key} entry {action:?} is not a !Ref to an SNS topic of the stack"));
                }
            }
        }
    }
    assert_none(problems);
}

#[test]
fn alarm_topics_are_not_under_an_aws_managed_key_and_their_key_admits_cloudwatch() {
    let template = template();
    let mut problems = Vec::new();
    for (topic, resource) in of_type(&template, "AWS::SNS::Topic") {
        let key = &resource["Properties"]["KmsMasterKeyId"];
        if key.is_null() {
            continue; // unencrypted: CloudWatch can publish (a choice the docs must explain)
        }
        if let Some(id) = key.as_str() {
            if id.starts_with("alias/aws/") {
                problems.push(format!("{topic}: KmsMasterKeyId {id} is AWS-managed; CloudWatch cannot publish to it"));
            }
            continue;
        }
        let key_name = match key {
            Value::Tagged(t) if t.tag == "GetAtt" => t.value.as_str().and_then(|s| s.strip_suffix(".Arn")),
            other => ref_name(other),
        };
        let Some(policy) = key_name.map(|k| &template["Resources"][k]["Properties"]["KeyPolicy"]) else {
            problems.push(format!("{topic}: KmsMasterKeyId {key:?} is neither a key of the stack nor a literal"));
            continue;
        };
        let admits_cloudwatch = policy["Statement"].as_sequence().into_iter().flatten().any(|s| {
            let actions: Vec<&str> = match &s["Action"] {
                Value::Sequence(list) => list.iter().filter_map(Value::as_str).collect(),
                one => one.as_str().into_iter().collect(),
            };
            s["Effect"].as_str() == Some("Allow")
                && s["Principal"]["Service"].as_str() == Some("cloudwatch.amazonaws.com")
                && actions.contains(&"kms:Decrypt")
                && actions.iter().any(|a| a.starts_with("kms:GenerateDataKey"))
        });
        if !admits_cloudwatch {
            problems.push(format!(
                "{topic}: the policy of its key does not allow cloudwatch.amazonaws.com kms:Decrypt and kms:GenerateDataKey*"
            ));
        }
        let rotated = key_name.map(|k| &template["Resources"][k]["Properties"]["EnableKeyRotation"]);
        if rotated.and_then(Value::as_bool) != Some(true) {
            problems.push(format!("{topic}: its key has no EnableKeyRotation: true"));
        }
    }
    assert_none(problems);
}

#[test]
fn alarms_watch_only_metrics_and_dimension_sets_the_code_emits() {
    let template = template();
    let targets = default_targets(&template);
    // Metrics made from log lines by the template's own metric filters.
    let mut filtered = BTreeSet::new();
    for (_, filter) in of_type(&template, "AWS::Logs::MetricFilter") {
        for t in filter["Properties"]["MetricTransformations"].as_sequence().into_iter().flatten() {
            let namespace = text(&t["MetricNamespace"]).expect("MetricNamespace").to_owned();
            filtered.insert((namespace, t["MetricName"].as_str().expect("MetricName").to_owned()));
        }
    }
    let sets: Vec<BTreeSet<&str>> = DIMENSION_SETS.iter().map(|set| set.iter().copied().collect()).collect();
    let mut problems = Vec::new();
    let mut ours = 0;
    for w in watched_metrics(&template) {
        let alarm = &w.alarm;
        let Some(namespace) = text(w.namespace) else {
            problems.push(format!("{alarm}: namespace {:?} is not a literal or !Sub", w.namespace));
            continue;
        };
        if namespace.starts_with("AWS/") {
            continue;
        }
        if namespace != NAMESPACE {
            if !filtered.contains(&(namespace.to_owned(), w.name.to_owned())) {
                problems.push(format!("{alarm}: {namespace}/{} comes from no metric filter of the template", w.name));
            }
            continue;
        }
        ours += 1;
        let names: BTreeSet<&str> = w.dimensions.keys().map(String::as_str).collect();
        if !sets.contains(&names) {
            problems.push(format!("{alarm}: dimensions {names:?} are not a set the code emits ({DIMENSION_SETS:?})"));
        }
        if w.dimensions.get("Stack").and_then(|v| ref_name(v)) != Some("AWS::StackName") {
            problems.push(format!(
                "{alarm}: the Stack dimension is not !Ref AWS::StackName (another stack's metrics would count)"
            ));
        }
        let function = w.dimensions.get("Function").and_then(|v| v.as_str());
        let emitted: &[&str] = match function {
            Some("worker") => WORKER_METRICS,
            Some("webhook") => WEBHOOK_METRICS,
            other => {
                problems.push(format!("{alarm}: Function dimension {other:?} is neither worker nor webhook"));
                continue;
            }
        };
        if !emitted.contains(&w.name) {
            problems.push(format!("{alarm}: the {} never emits {}", function.unwrap_or_default(), w.name));
        }
        if let Some(target) = w.dimensions.get("Target") {
            if !target.as_str().is_some_and(|t| targets.iter().any(|known| known == t)) {
                problems.push(format!("{alarm}: Target {target:?} is not a target of the default routes {targets:?}"));
            }
        }
    }
    assert!(ours > 0, "no alarm watches a {NAMESPACE} metric: the test would prove nothing");
    assert_none(problems);
}

/// Globals' variables merged under the function's own, as SAM does.
fn function_env<'a>(template: &'a Value, function: &str) -> BTreeMap<String, &'a Value> {
    let mut env = BTreeMap::new();
    for vars in [
        &template["Globals"]["Function"]["Environment"]["Variables"],
        &template["Resources"][function]["Properties"]["Environment"]["Variables"],
    ] {
        for (name, value) in vars.as_mapping().into_iter().flatten() {
            env.insert(name.as_str().expect("variable name").to_owned(), value);
        }
    }
    env
}

#[test]
fn every_variable_the_code_requires_is_set_on_its_function() {
    let template = template();
    let sftp: Vec<String> = default_targets(&template).iter().map(|t| format!("SFTP_SECRET_ID_{t}")).collect();
    let mut problems = Vec::new();
    for (function, required) in [
        ("WebhookFunction", WebhookConfig::REQUIRED_VARS.iter().map(|v| v.to_string()).collect::<Vec<_>>()),
        ("WorkerFunction", WorkerConfig::REQUIRED_VARS.iter().map(|v| v.to_string()).chain(sftp.clone()).collect()),
    ] {
        let env = function_env(&template, function);
        for var in &required {
            if !env.contains_key(var) {
                problems.push(format!("{function}: {var} is required by the code and not set"));
            }
        }
        if env.get("STACK_NAME").and_then(|v| ref_name(v)) != Some("AWS::StackName") {
            problems.push(format!("{function}: STACK_NAME is not !Ref AWS::StackName (metrics would say 'local')"));
        }
    }
    // Settings both functions read come from one place, not two copies that can drift.
    for var in ["ROUTES", "ROUTE_OVERRIDES"] {
        if template["Globals"]["Function"]["Environment"]["Variables"][var].is_null() {
            problems.push(format!("{var} is not set once in Globals for both functions"));
        }
        for function in ["WebhookFunction", "WorkerFunction"] {
            if !template["Resources"][function]["Properties"]["Environment"]["Variables"][var].is_null() {
                problems.push(format!("{function} sets {var} itself: it can drift from the other function"));
            }
        }
    }
    assert_none(problems);
}

#[test]
fn the_worker_knows_the_queues_max_receive_count() {
    let template = template();
    let worker = function_env(&template, "WorkerFunction");
    let in_env = worker.get("MAX_RECEIVE_COUNT").and_then(|v| scalar(&template, v));
    let queue =
        scalar(&template, &template["Resources"]["JobsQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"]);
    assert!(in_env.is_some(), "MAX_RECEIVE_COUNT is not set on the worker");
    assert_eq!(in_env, queue, "MAX_RECEIVE_COUNT and the jobs queue's maxReceiveCount differ");
}

#[test]
fn the_duration_alarm_fires_at_80_percent_of_the_worker_timeout() {
    let template = template();
    let timeout = template["Resources"]["WorkerFunction"]["Properties"]["Timeout"].as_f64().expect("worker Timeout");
    let durations: Vec<f64> = of_type(&template, "AWS::CloudWatch::Alarm")
        .into_iter()
        .map(|(_, a)| &a["Properties"])
        .filter(|p| p["MetricName"].as_str() == Some("Duration"))
        .filter(|p| {
            dimensions(&p["Dimensions"]).get("FunctionName").and_then(|v| ref_name(v)) == Some("WorkerFunction")
        })
        .map(|p| p["Threshold"].as_f64().expect("a numeric threshold"))
        .collect();
    assert_eq!(durations, vec![timeout * 1000.0 * 0.8], "one worker Duration alarm at 80 % of {timeout} s");
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alarm_links_to_a_section_of_its_own_in_the_runbooks_alarms_that_names_it() {
    let template = template();
    let runbook = std::fs::read_to_string(format!("{ROOT}/docs/runbook.md")).expect("docs/runbook.md");
    let anchors: BTreeSet<String> =
        runbook.lines().filter_map(|l| l.strip_prefix('#')).map(|l| anchor(l.trim_start_matches('#'))).collect();
    // The `### ` sections of the `## Alarms` chapter, by anchor, with their text: the alarms
    // are described there and nowhere else.
    let chapter = runbook.split("\n## Alarms").nth(1).and_then(|s| s.split("\n## ").next()).unwrap_or_default();
    let sections: BTreeMap<String, &str> = chapter
        .split("\n### ")
        .skip(1)
        .map(|s| s.split_once('\n').unwrap_or((s, "")))
        .map(|(title, body)| (anchor(title), body))
        .collect();
    let mut problems = Vec::new();
    for (alarm, resource) in of_type(&template, "AWS::CloudWatch::Alarm") {
        let description = text(&resource["Properties"]["AlarmDescription"]).unwrap_or_default();
        let name = text(&resource["Properties"]["AlarmName"]).and_then(|n| n.strip_prefix("${AWS::StackName}-"));
        match description.split_once("${RunbookUrl}#") {
            Some((_, section)) if anchors.contains(section.trim()) => {
                let section = section.trim();
                match (sections.get(section), name) {
                    (None, _) => problems.push(format!("{alarm}: #{section} is not a section of the runbook's Alarms")),
                    (Some(_), None) => {
                        problems.push(format!("{alarm}: its AlarmName is not !Sub \"${{AWS::StackName}}-NAME\""))
                    }
                    (Some(body), Some(name)) if !body.contains(&format!("`STACK-{name}`")) => {
                        problems.push(format!("{alarm}: the runbook's section #{section} does not name `STACK-{name}`"))
                    }
                    _ => {}
                }
            }
            Some((_, section)) => problems.push(format!("{alarm}: docs/runbook.md has no section #{section}")),
            None => problems.push(format!("{alarm}: the description has no ${{RunbookUrl}}#section link")),
        }
    }
    assert_none(problems);
}

#[test]
fn every_suppressed_security_finding_says_why() {
    let template = template();
    let mut problems = Vec::new();
    let mut skips = 0;
    for (name, resource) in resources(&template) {
        for skip in resource["Metadata"]["checkov"]["skip"].as_sequence().into_iter().flatten() {
            skips += 1;
            let why = skip["comment"].as_str().unwrap_or_default();
            if why.split_whitespace().count() < 8 {
                problems.push(format!("{name}: checkov skip {:?} has no real reason: {why:?}", skip["id"]));
            }
        }
    }
    assert!(skips > 0, "no suppressions found: has the Metadata layout changed?");
    assert_none(problems);
}

#[test]
fn the_shareable_rerun_event_is_the_one_in_events() {
    let template = template();
    let schema = of_type(&template, "AWS::EventSchemas::Schema")
        .into_iter()
        .find(|(_, s)| text(&s["Properties"]["SchemaName"]).is_some_and(|n| n.contains("${WorkerFunction}")))
        .expect("a shareable test event schema of the worker");
    // Lambda's console looks only in this registry, under this name.
    assert_eq!(text(&schema.1["Properties"]["SchemaName"]), Some("_${WorkerFunction}-schema"));
    let registry = match &schema.1["Properties"]["RegistryName"] {
        Value::Tagged(t) if t.tag == "If" => t.value[2].as_str(),
        other => other.as_str(),
    };
    assert_eq!(registry, Some("lambda-testevent-schemas"));
    let content: serde_json::Value =
        serde_json::from_str(schema.1["Properties"]["Content"].as_str().expect("Content")).expect("Content is JSON");
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/events/worker-direct-rerun.json"))
            .expect("events/worker-direct-rerun.json"),
    )
    .expect("the event is JSON");
    let examples = content["components"]["examples"].as_object().expect("examples");
    assert!(examples.values().any(|e| e["value"] == file), "no example equals events/worker-direct-rerun.json");
}

/// Every statement of a function's inline policies (both branches of an `!If`).
fn statements<'a>(template: &'a Value, function: &str) -> Vec<&'a Value> {
    let mut all = Vec::new();
    for policy in template["Resources"][function]["Properties"]["Policies"].as_sequence().into_iter().flatten() {
        let documents: Vec<&Value> = match policy {
            Value::Tagged(t) if t.tag == "If" => {
                t.value.as_sequence().map(|s| s[1..].iter().collect()).unwrap_or_default()
            }
            other => vec![other],
        };
        for document in documents {
            all.extend(document["Statement"].as_sequence().into_iter().flatten());
        }
    }
    all
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(list) => list.iter().filter_map(|v| text(v).map(str::to_owned)).collect(),
        one => text(one).map(str::to_owned).into_iter().collect(),
    }
}

/// The object prefix (`failed/`) of a resource such as `${StagingBucket.Arn}/failed/*`.
fn object_prefix(resource: &str) -> Option<&str> {
    resource.strip_prefix("${StagingBucket.Arn}/")?.strip_suffix('*')
}

#[test]
fn the_jobs_queue_admits_notifications_of_this_stacks_bucket_only() {
    let template = template();
    let bucket_name = &template["Resources"]["StagingBucket"]["Properties"]["BucketName"];
    assert!(!bucket_name.is_null(), "the bucket has no name the queue policy can pin");
    let statement = &template["Resources"]["JobsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0];
    let condition = &statement["Condition"];
    let source = &condition["ArnEquals"]["aws:SourceArn"];
    let Value::Tagged(sub) = source else { panic!("aws:SourceArn is not a !Sub of the bucket's name: {source:?}") };
    let Value::Tagged(name_sub) = bucket_name else { panic!("BucketName is not a !Sub: {bucket_name:?}") };
    let (arn, name) = (&sub.value[0], &name_sub.value[0]);
    assert_eq!(
        arn.as_str().and_then(|a| a.strip_prefix("arn:${AWS::Partition}:s3:::")),
        name.as_str(),
        "the queue admits another bucket than the stack's"
    );
    assert_eq!(sub.value[1], name_sub.value[1], "the ARN's variables are not the bucket name's");
    assert!(!arn.as_str().unwrap_or_default().contains('*'), "a wildcard source ARN");
    assert_eq!(ref_name(&condition["StringEquals"]["aws:SourceAccount"]), Some("AWS::AccountId"));
}

#[test]
fn the_worker_deletes_only_its_lease_and_lists_only_its_own_prefixes() {
    use maestro_relay::job::keys;
    let template = template();
    let worker = statements(&template, "WorkerFunction");
    let mut problems = Vec::new();
    // The only delete in the worker's code: the lease (failure records are kept).
    let deletable: BTreeSet<String> =
        [keys::lease("j")].iter().map(|k| k.split_inclusive('/').next().unwrap_or_default().to_owned()).collect();
    let mut writable = BTreeSet::new();
    for statement in &worker {
        let actions = strings(&statement["Action"]);
        let resources = strings(&statement["Resource"]);
        if actions.iter().any(|a| a == "s3:*" || a == "*") {
            problems.push(format!("a wildcard action: {actions:?}"));
        }
        if actions.iter().any(|a| a == "s3:PutObject") {
            writable.extend(resources.iter().filter_map(|r| object_prefix(r)).map(str::to_owned));
        }
        if actions.iter().any(|a| a == "s3:DeleteObject") {
            let prefixes: BTreeSet<String> =
                resources.iter().map(|r| object_prefix(r).unwrap_or(r).to_owned()).collect();
            if prefixes != deletable {
                problems.push(format!("the worker may delete {prefixes:?}; its code deletes only {deletable:?}"));
            }
        }
        if actions.iter().any(|a| a == "s3:ListBucket") {
            let listed = strings(&statement["Condition"]["StringLikeIfExists"]["s3:prefix"]);
            if listed.is_empty() {
                problems.push("s3:ListBucket is not limited by s3:prefix".to_owned());
            }
            for prefix in listed {
                if prefix.strip_suffix('*').is_none_or(|p| !p.ends_with('/')) {
                    problems.push(format!("listed prefix {prefix:?} is not a folder/*"));
                }
            }
        }
    }
    assert!(writable.contains("staging/") && writable.contains("locks/"), "the worker cannot write: {writable:?}");
    let webhook = statements(&template, "WebhookFunction");
    if webhook.iter().any(|s| strings(&s["Action"]).iter().any(|a| a.contains("Delete"))) {
        problems.push("the webhook may delete".to_owned());
    }
    // A catch-up schedule reads a destination record and a receipt that may be missing: the
    // webhook's one ListBucket, limited to those two prefixes.
    for statement in webhook.iter().filter(|s| strings(&s["Action"]).iter().any(|a| a.contains("List"))) {
        let listed = strings(&statement["Condition"]["StringLikeIfExists"]["s3:prefix"]);
        if listed != ["latest/*", "receipts/*"] {
            problems.push(format!("the webhook may list {listed:?}, beyond a catch-up's latest/* and receipts/*"));
        }
    }
    assert_none(problems);
}

#[test]
fn the_staging_bucket_is_versioned_and_outlives_the_stack() {
    let template = template();
    let bucket = &template["Resources"]["StagingBucket"];
    assert_eq!(bucket["Properties"]["VersioningConfiguration"]["Status"].as_str(), Some("Enabled"));
    assert_eq!(bucket["DeletionPolicy"].as_str(), Some("Retain"));
    assert_eq!(bucket["UpdateReplacePolicy"].as_str(), Some("Retain"));
    let rules = bucket["Properties"]["LifecycleConfiguration"]["Rules"].as_sequence().expect("lifecycle rules");
    assert!(
        rules.iter().any(|r| !r["NoncurrentVersionExpiration"].is_null()),
        "old versions are never expired: every rewrite would be kept forever"
    );
    assert!(rules.iter().any(|r| r["Prefix"].as_str() == Some("budget/")), "budget counters are never expired");
}

#[test]
fn concurrency_is_capped_at_the_stage_the_webhook_and_the_queue() {
    let template = template();
    let parameter = |value: &Value| ref_name(value).map(|p| template["Parameters"][p].clone());
    let webhook = &template["Resources"]["WebhookFunction"]["Properties"];
    let reserved = parameter(&webhook["ReservedConcurrentExecutions"]).expect("webhook ReservedConcurrentExecutions");
    assert!(reserved["Default"].as_u64().is_some_and(|n| n >= 1), "{reserved:?}");
    let scaling =
        &template["Resources"]["WorkerFunction"]["Properties"]["Events"]["Jobs"]["Properties"]["ScalingConfig"];
    let maximum = parameter(&scaling["MaximumConcurrency"]).expect("worker ScalingConfig MaximumConcurrency");
    // SQS's event source accepts 2 to 1000.
    assert!(maximum["MinValue"].as_u64() >= Some(2) && maximum["Default"].as_u64() >= Some(2), "{maximum:?}");
    let throttle = &template["Resources"]["WebhookApi"]["Properties"]["DefaultRouteSettings"];
    let (rate, burst) = (throttle["ThrottlingRateLimit"].as_f64(), throttle["ThrottlingBurstLimit"].as_f64());
    assert!(rate.is_some_and(|r| r > 0.0) && burst >= rate, "stage throttle {rate:?}/{burst:?}");
}

#[test]
fn customer_managed_secret_keys_decrypt_through_secrets_manager_only_for_both_functions() {
    let template = template();
    assert_eq!(template["Parameters"]["SecretsKmsKeyArns"]["Type"].as_str(), Some("CommaDelimitedList"));
    for function in ["WebhookFunction", "WorkerFunction"] {
        let decrypt: Vec<&Value> = statements(&template, function)
            .into_iter()
            .filter(|s| strings(&s["Action"]).iter().any(|a| a == "kms:Decrypt"))
            .collect();
        assert_eq!(decrypt.len(), 1, "{function}: one kms:Decrypt statement");
        assert_eq!(ref_name(&decrypt[0]["Resource"]), Some("SecretsKmsKeyArns"), "{function}");
        let via = text(&decrypt[0]["Condition"]["StringEquals"]["kms:ViaService"]).unwrap_or_default();
        assert!(via.starts_with("secretsmanager."), "{function}: kms:Decrypt not limited to Secrets Manager: {via:?}");
    }
}

#[test]
fn the_webhook_limits_are_deployed_and_their_defaults_parse() {
    let template = template();
    let env = function_env(&template, "WebhookFunction");
    let mut vars = std::collections::HashMap::new();
    for name in ["ALLOWED_SOURCE_CIDRS", "ALLOWED_REQUESTS", "DAILY_JOB_BUDGET", "ROUTES", "ROUTE_OVERRIDES"] {
        let parameter = env.get(name).and_then(|v| ref_name(v)).unwrap_or_else(|| panic!("{name} is not set"));
        let default = &template["Parameters"][parameter]["Default"];
        vars.insert(name.to_owned(), scalar(&template, default).unwrap_or_default());
    }
    vars.insert("STAGING_BUCKET".into(), "b".into());
    vars.insert("WEBHOOK_SECRET_ID".into(), "s".into());
    let config = WebhookConfig::from_lookup(&|name| vars.get(name).cloned()).expect("the template's defaults");
    assert_eq!(config.settings.allow_list, maestro_relay::webhook::policy::AllowList::default());
    assert!(config.settings.allowed_sources.is_empty() && config.settings.daily_job_budget.is_none());
}

#[test]
fn the_bucket_policy_refuses_any_put_to_jobs_without_if_none_match_so_a_manifest_is_never_overwritten() {
    let template = template();
    let policies = of_type(&template, "AWS::S3::BucketPolicy");
    let statements: Vec<&Value> = policies
        .iter()
        .flat_map(|(_, p)| p["Properties"]["PolicyDocument"]["Statement"].as_sequence().into_iter().flatten())
        .collect();
    let write_once = statements.iter().find(|s| {
        s["Effect"].as_str() == Some("Deny")
            && s["Action"].as_str() == Some("s3:PutObject")
            && s["Principal"].as_str() == Some("*")
            && s["Condition"]["Null"]["s3:if-none-match"].as_str() == Some("true")
    });
    let write_once = write_once.expect("a Deny of s3:PutObject without If-None-Match");
    let resource = match &write_once["Resource"] {
        Value::Tagged(tagged) if tagged.tag == "Sub" => tagged.value.as_str().unwrap_or_default().to_owned(),
        other => text(other).unwrap_or_default().to_owned(),
    };
    assert!(resource.ends_with("/jobs/*"), "{resource}");
}

/// Every `.rs` file under `dir`, read.
fn rust_sources(dir: &std::path::Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).expect("src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).expect("a source file"));
        }
    }
}

/// The messages a Logs Insights query matches: `message = "…"` and each alternative of
/// `message like /a|b/`.
fn messages_matched(query: &str) -> Vec<String> {
    let mut found = Vec::new();
    for part in query.split("message = \"").skip(1) {
        found.extend(part.split('"').next().map(str::to_owned));
    }
    for part in query.split("message like /").skip(1) {
        let pattern = part.split('/').next().unwrap_or_default();
        found.extend(pattern.split('|').map(str::to_owned));
    }
    found
}

#[test]
fn every_saved_query_matches_only_messages_the_code_logs() {
    let template = template();
    let mut code = String::new();
    rust_sources(std::path::Path::new(&format!("{ROOT}/src")), &mut code);
    let queries = of_type(&template, "AWS::Logs::QueryDefinition");
    assert!(queries.len() >= 4, "the saved queries: {:?}", queries.iter().map(|(n, _)| n).collect::<Vec<_>>());
    let mut problems = Vec::new();
    for (name, query) in &queries {
        let text = query["Properties"]["QueryString"].as_str().expect("QueryString");
        for message in messages_matched(text) {
            if !code.contains(&format!("\"{message}")) {
                problems.push(format!("{name} matches {message:?}, which no code logs"));
            }
        }
    }
    assert_none(problems);
    // The check itself finds a message that is not there.
    assert!(!code.contains("\"message failed"), "the old query's message would pass");
}

#[test]
fn the_stack_outputs_name_what_the_operators_tool_reads() {
    let template = template();
    for output in [
        "StagingBucketName",
        "JobsQueueUrl",
        "DeadLetterQueueUrl",
        "WorkerFunctionName",
        "WebhookFunctionName",
        "JobsQueueArn",
        "DeadLetterQueueArn",
    ] {
        assert!(template["Outputs"].get(output).is_some(), "no output {output}");
        // The tool reads these names; a renamed output breaks `--stack`.
        if ["StagingBucketName", "JobsQueueUrl", "DeadLetterQueueUrl", "WorkerFunctionName"].contains(&output) {
            let tool = std::fs::read_to_string(format!("{ROOT}/src/bin/maestro-relay.rs")).expect("the tool");
            assert!(tool.contains(&format!("\"{output}\"")), "maestro-relay does not read {output}");
        }
    }
}

/// `Fn::GetAtt` of `!GetAtt Name.Attribute` (or `[Name, Attribute]`): `Name.Attribute`.
fn get_att(value: &Value) -> Option<String> {
    match value {
        Value::Tagged(t) if t.tag == "GetAtt" => match &t.value {
            Value::String(s) => Some(s.clone()),
            Value::Sequence(parts) => Some(parts.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(".")),
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn the_scheduled_start_is_off_by_default_and_its_schedule_sends_the_event_the_code_reads() {
    use maestro_relay::webhook::schedule::{scheduled_start, ScheduleMode};
    let template = template();
    let mode = &template["Parameters"]["ScheduleMode"];
    assert_eq!(mode["Default"].as_str(), Some("off"));
    for value in mode["AllowedValues"].as_sequence().expect("AllowedValues") {
        let value = value.as_str().expect("a mode");
        assert!(value.parse::<ScheduleMode>().is_ok(), "ScheduleMode {value:?} is not a SCHEDULE_MODE the code reads");
    }
    let env = function_env(&template, "WebhookFunction");
    for (var, parameter) in [
        ("SCHEDULE_MODE", "ScheduleMode"),
        ("SCHEDULE_REQUEST", "ScheduleRequest"),
        ("SCHEDULE_CATCH_UP_WINDOW_MINUTES", "ScheduleCatchUpWindowMinutes"),
    ] {
        assert_eq!(env.get(var).and_then(|v| ref_name(v)), Some(parameter), "{var}");
    }
    let mut problems = Vec::new();
    for name in [
        "Schedule",
        "ScheduleRole",
        "ScheduleDeadLetterQueue",
        "ScheduleDeadLetterQueueAlarm",
        "WebhookScheduleInvokeConfig",
    ] {
        if template["Resources"][name]["Condition"].as_str() != Some("HasSchedule") {
            problems.push(format!("{name} exists without the schedule (Condition HasSchedule)"));
        }
    }
    let schedule = &template["Resources"]["Schedule"]["Properties"];
    assert_eq!(schedule["FlexibleTimeWindow"]["Mode"].as_str(), Some("OFF"));
    assert_eq!(ref_name(&schedule["ScheduleExpressionTimezone"]), Some("ScheduleTimezone"));
    let target = &schedule["Target"];
    assert_eq!(get_att(&target["Arn"]).as_deref(), Some("WebhookFunction.Arn"));
    assert_eq!(get_att(&target["RoleArn"]).as_deref(), Some("ScheduleRole.Arn"));
    assert_eq!(get_att(&target["DeadLetterConfig"]["Arn"]).as_deref(), Some("ScheduleDeadLetterQueue.Arn"));
    assert!(target["RetryPolicy"]["MaximumRetryAttempts"].as_u64().is_some_and(|n| n > 0));
    // What Scheduler sends once it fills in the slot, and the sample in events/, are what
    // the function takes for a scheduled start.
    let input = target["Input"].as_str().expect("Input");
    let sent: serde_json::Value =
        serde_json::from_str(&input.replace("<aws.scheduler.scheduled-time>", "2026-12-07T06:30:00Z")).expect("JSON");
    let sample: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/events/schedule-start.json")).expect("events/schedule-start.json"),
    )
    .expect("the sample is JSON");
    for event in [&sent, &sample] {
        assert!(scheduled_start(event).is_some_and(|s| s.is_ok()), "not a scheduled start: {event}");
    }
    let failures = &template["Resources"]["WebhookScheduleInvokeConfig"]["Properties"];
    assert_eq!(ref_name(&failures["FunctionName"]), Some("WebhookFunction"));
    assert_eq!(
        get_att(&failures["DestinationConfig"]["OnFailure"]["Destination"]).as_deref(),
        Some("ScheduleDeadLetterQueue.Arn")
    );
    assert_none(problems);
}

#[test]
fn the_schedule_role_is_assumed_by_scheduler_only_and_may_only_invoke_the_webhook_and_fill_its_dlq() {
    let template = template();
    let role = &template["Resources"]["ScheduleRole"]["Properties"];
    let trust = role["AssumeRolePolicyDocument"]["Statement"].as_sequence().expect("trust statements");
    assert_eq!(trust.len(), 1);
    assert_eq!(trust[0]["Principal"]["Service"].as_str(), Some("scheduler.amazonaws.com"));
    assert_eq!(ref_name(&trust[0]["Condition"]["StringEquals"]["aws:SourceAccount"]), Some("AWS::AccountId"));
    let mut granted = BTreeSet::new();
    for policy in role["Policies"].as_sequence().expect("Policies") {
        for statement in policy["PolicyDocument"]["Statement"].as_sequence().into_iter().flatten() {
            assert_eq!(statement["Effect"].as_str(), Some("Allow"));
            let resource = get_att(&statement["Resource"]).unwrap_or_else(|| format!("{:?}", statement["Resource"]));
            for action in strings(&statement["Action"]) {
                granted.insert((action, resource.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> =
        [("lambda:InvokeFunction", "WebhookFunction.Arn"), ("sqs:SendMessage", "ScheduleDeadLetterQueue.Arn")]
            .into_iter()
            .map(|(a, r)| (a.to_owned(), r.to_owned()))
            .collect();
    assert_eq!(granted, expected);
}
