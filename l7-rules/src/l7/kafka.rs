//! Compiled Kafka rules and matching (docs/policy-semantics.md §4.2): every topic of a request
//! must be covered, possibly by different rules; rules without a topic (or keys that carry no
//! topic) match outright.

use crate::RuleRef;

/// A set of Kafka API keys (0..128).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiKeySet(u128);

impl ApiKeySet {
    pub fn from_keys(keys: &[i16]) -> ApiKeySet {
        let mut s = ApiKeySet(0);
        for k in keys {
            s.insert(*k);
        }
        s
    }

    pub fn insert(&mut self, key: i16) {
        if (0..128).contains(&key) {
            self.0 |= 1u128 << key;
        }
    }

    pub fn contains(self, key: i16) -> bool {
        (0..128).contains(&key) && self.0 & (1u128 << key) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

#[derive(Clone, Debug)]
pub struct KafkaRule {
    /// Empty = every key.
    pub api_keys: ApiKeySet,
    /// `None` = every version.
    pub api_version: Option<i16>,
    pub client_id: Option<Box<str>>,
    pub topic: Option<Box<str>>,
    pub origin: RuleRef,
    pub summary: String,
}

/// A Kafka request as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct KafkaRequest<'a> {
    pub api_key: i16,
    pub api_version: i16,
    /// `None` for header v0 (treated as empty).
    pub client_id: Option<&'a str>,
    pub topics: &'a [&'a str],
    /// Metadata v1+ with an empty topic list: brokers and cluster only, no topic data (Ward's
    /// extension: a rule whose keys include Metadata allows it whatever its topic).
    pub broker_discovery: bool,
}

impl KafkaRule {
    fn matches_header(&self, req: &KafkaRequest<'_>) -> bool {
        (self.api_keys.is_empty() || self.api_keys.contains(req.api_key))
            && self.api_version.is_none_or(|v| v == req.api_version)
            && self
                .client_id
                .as_deref()
                .is_none_or(|c| c == req.client_id.unwrap_or(""))
    }
}

/// The outcome: which rules allowed it (one rule, or the rules whose topics together covered
/// every topic), or which topics were left uncovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KafkaVerdict {
    Allowed { rules: Vec<usize> },
    Denied { uncovered: Vec<String> },
}

/// Keys whose topics Cilium's Kafka parser reads (§4.2), and OffsetForLeaderEpoch (23) and
/// AddPartitionsToTxn (24), Ward's extensions with the roles' keys: for every other key a request counts as carrying
/// no topic, so a topic-restricted rule never matches it.
pub const PARSED_TOPIC_KEYS: [i16; 8] = [0, 1, 2, 3, 8, 9, 23, 24];

/// OR of rules with topic coverage. An empty rule list denies everything.
pub fn check<R: std::borrow::Borrow<KafkaRule>>(
    rules: &[R],
    req: &KafkaRequest<'_>,
) -> KafkaVerdict {
    // Cilium's quirks, kept so Ward never allows more: client_id is empty for v0 requests,
    // and topics of keys it does not parse are invisible.
    let req = &KafkaRequest {
        client_id: if req.api_version == 0 {
            None
        } else {
            req.client_id
        },
        topics: if PARSED_TOPIC_KEYS.contains(&req.api_key) {
            req.topics
        } else {
            &[]
        },
        ..*req
    };
    if req.broker_discovery && req.api_key == 3 && req.topics.is_empty() {
        if let Some(i) = rules.iter().position(|r| r.borrow().matches_header(req)) {
            return KafkaVerdict::Allowed { rules: vec![i] };
        }
    }
    let topic_kind = parsers::kafka::is_topic_kind(req.api_key);
    // Bit i set = topic i still uncovered (requests rarely carry more than a few topics).
    let mut remaining: Vec<bool> = vec![true; req.topics.len()];
    let mut used = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let rule: &KafkaRule = std::borrow::Borrow::borrow(rule);
        if !rule.matches_header(req) {
            continue;
        }
        match (&rule.topic, topic_kind) {
            (Some(topic), true) => {
                let mut hit = false;
                for (j, t) in req.topics.iter().enumerate() {
                    if remaining[j] && **t == **topic {
                        remaining[j] = false;
                        hit = true;
                    }
                }
                if hit {
                    used.push(i);
                    if remaining.iter().all(|r| !r) {
                        return KafkaVerdict::Allowed { rules: used };
                    }
                }
            }
            _ => return KafkaVerdict::Allowed { rules: vec![i] },
        }
    }
    KafkaVerdict::Denied {
        uncovered: req
            .topics
            .iter()
            .zip(&remaining)
            .filter(|(_, r)| **r)
            .map(|(t, _)| t.to_string())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(keys: &[i16], topic: Option<&str>) -> KafkaRule {
        KafkaRule {
            api_keys: ApiKeySet::from_keys(keys),
            api_version: None,
            client_id: None,
            topic: topic.map(Into::into),
            origin: RuleRef::test("kafka"),
            summary: String::new(),
        }
    }

    fn req<'a>(key: i16, topics: &'a [&'a str]) -> KafkaRequest<'a> {
        KafkaRequest {
            api_key: key,
            api_version: 5,
            client_id: Some("c1"),
            topics,
            broker_discovery: false,
        }
    }

    #[test]
    fn all_topics_must_be_covered_possibly_by_several_rules() {
        let consume = parsers::kafka::ROLE_CONSUME;
        let rules = vec![rule(consume, Some("orders")), rule(consume, Some("events"))];
        let allowed =
            |k, t: &[&str]| matches!(check(&rules, &req(k, t)), KafkaVerdict::Allowed { .. });
        assert!(allowed(1, &["orders"]));
        assert!(allowed(1, &["orders", "events"]));
        assert!(!allowed(1, &["orders", "payments"]));
        assert!(
            !allowed(0, &["orders"]),
            "produce is not in the consume role"
        );
        // Heartbeat (12) carries no topic: a topic rule of the role matches outright.
        assert!(allowed(12, &[]));
        // Metadata for all topics (empty list) never satisfies a topic rule.
        assert!(!allowed(3, &[]));
        assert_eq!(
            check(&rules, &req(1, &["orders", "payments"])),
            KafkaVerdict::Denied {
                uncovered: vec!["payments".into()]
            }
        );
    }

    #[test]
    fn broker_discovery_metadata_passes_a_topic_rule_of_a_role_with_metadata() {
        let produce = parsers::kafka::ROLE_PRODUCE;
        let rules = vec![rule(produce, Some("orders"))];
        let discovery = KafkaRequest {
            broker_discovery: true,
            ..req(3, &[])
        };
        assert!(matches!(
            check(&rules, &discovery),
            KafkaVerdict::Allowed { .. }
        ));
        // Not for all topics, and not for a role without Metadata.
        assert!(!matches!(
            check(&rules, &req(3, &[])),
            KafkaVerdict::Allowed { .. }
        ));
        let fetch_only = vec![rule(&[1], Some("orders"))];
        assert!(!matches!(
            check(&fetch_only, &discovery),
            KafkaVerdict::Allowed { .. }
        ));
    }

    #[test]
    fn roles_cover_the_keys_of_todays_producers_and_consumers() {
        let produce = [rule(parsers::kafka::ROLE_PRODUCE, Some("orders"))];
        let allowed = |rules: &[KafkaRule], k, t: &[&str]| {
            matches!(check(rules, &req(k, t)), KafkaVerdict::Allowed { .. })
        };
        // SASL comes first, under either role.
        assert!(allowed(&produce, 17, &[]) && allowed(&produce, 36, &[]));
        // InitProducerId and EndTxn carry no topic: the role's topic rule matches outright.
        assert!(allowed(&produce, 22, &[]));
        assert!(allowed(&produce, 26, &[]));
        // AddPartitionsToTxn's topics must be covered, as Produce's.
        assert!(allowed(&produce, 24, &["orders"]));
        assert!(!allowed(&produce, 24, &["orders", "audit"]));
        assert!(!allowed(&produce, 1, &["orders"]), "fetch is not produce");
        let consume = [rule(parsers::kafka::ROLE_CONSUME, Some("orders"))];
        assert!(allowed(&consume, 17, &[]) && allowed(&consume, 36, &[]));
        assert!(allowed(&consume, 23, &["orders"]), "OffsetForLeaderEpoch");
        assert!(!allowed(&consume, 23, &["orders", "audit"]));
        assert!(allowed(&consume, 68, &[]), "KIP-848 ConsumerGroupHeartbeat");
        assert!(allowed(&consume, 69, &[]), "KIP-848 ConsumerGroupDescribe");
        assert!(!allowed(&consume, 22, &[]), "InitProducerId is not consume");
    }

    #[test]
    fn empty_list_denies_and_empty_rule_allows() {
        assert!(matches!(
            check::<KafkaRule>(&[], &req(0, &["t"])),
            KafkaVerdict::Denied { .. }
        ));
        assert!(matches!(
            check(&[rule(&[], None)], &req(0, &["t"])),
            KafkaVerdict::Allowed { .. }
        ));
    }

    #[test]
    fn topics_of_unparsed_keys_and_v0_client_ids_are_invisible() {
        let rules = [rule(&[19], Some("a"))];
        assert!(matches!(
            check(&rules, &req(19, &["a"])),
            KafkaVerdict::Denied { .. }
        ));
        let mut r = rule(&[0], None);
        r.client_id = Some("c1".into());
        let mut q = req(0, &["x"]);
        q.client_id = Some("c1");
        assert!(matches!(
            check(&[r.clone()], &q),
            KafkaVerdict::Allowed { .. }
        ));
        q.api_version = 0;
        assert!(matches!(check(&[r], &q), KafkaVerdict::Denied { .. }));
    }

    #[test]
    fn version_and_client_id_are_exact() {
        let mut r = rule(&[0], None);
        r.api_version = Some(3);
        r.client_id = Some("app".into());
        let rules = [r];
        let mut q = req(0, &["t"]);
        q.api_version = 3;
        q.client_id = Some("app");
        assert!(matches!(check(&rules, &q), KafkaVerdict::Allowed { .. }));
        q.api_version = 4;
        assert!(matches!(check(&rules, &q), KafkaVerdict::Denied { .. }));
        q.api_version = 3;
        q.client_id = None;
        assert!(matches!(check(&rules, &q), KafkaVerdict::Denied { .. }));
    }
}
