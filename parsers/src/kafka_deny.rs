// Deny-response encoders, included by `parsers::kafka` once per `kafka-protocol` release: in
// `current` (0.17, Kafka 4.x) and in `legacy` (0.15, Kafka 3.9, for the older versions 0.17
// dropped). Each includer names its crate `kp` and defines `produce_topic_id`.

use kp::messages::{
    fetch_response, find_coordinator_response, list_offsets_response, metadata_response,
    offset_commit_response, offset_fetch_response, produce_response, ApiKey, BrokerId, GroupId,
    ResponseHeader, TopicName,
};
use kp::protocol::{Encodable, StrBytes};

use super::{Body, KafkaRequest, Topic, FRAME_PREFIX_LEN, TOPIC_AUTHORIZATION_FAILED};
use bytes::BufMut;

/// The deny response to `req` (see [`super::deny_response`]) with error `code`; `body` is the
/// walked request body for the keys that have a walker.
pub(super) fn deny(req: &KafkaRequest, body: Option<&Body<'_>>, code: i16) -> Option<Vec<u8>> {
    use kp::messages as m;
    let key = ApiKey::try_from(req.api_key).ok()?;
    let version = req.api_version;
    let header = ResponseHeader::default().with_correlation_id(req.correlation_id);
    let header_version = key.response_header_version(version);
    let mut out = Vec::with_capacity(256);
    out.put_i32(0);
    header.encode(&mut out, header_version).ok()?;
    // Keys answered with a top-level error code alone.
    macro_rules! top_level {
        ($t:ty) => {
            <$t>::default()
                .with_error_code(code)
                .encode(&mut out, version)
        };
    }
    let generic = match key {
        ApiKey::JoinGroup => Some(top_level!(m::JoinGroupResponse)),
        ApiKey::Heartbeat => Some(top_level!(m::HeartbeatResponse)),
        ApiKey::LeaveGroup => Some(top_level!(m::LeaveGroupResponse)),
        ApiKey::SyncGroup => Some(top_level!(m::SyncGroupResponse)),
        ApiKey::ListGroups => Some(top_level!(m::ListGroupsResponse)),
        ApiKey::OffsetDelete => Some(top_level!(m::OffsetDeleteResponse)),
        ApiKey::ConsumerGroupHeartbeat => Some(top_level!(m::ConsumerGroupHeartbeatResponse)),
        ApiKey::InitProducerId => Some(
            m::InitProducerIdResponse::default()
                .with_error_code(code)
                .with_producer_id(m::ProducerId(-1))
                .with_producer_epoch(-1)
                .encode(&mut out, version),
        ),
        ApiKey::AddOffsetsToTxn => Some(top_level!(m::AddOffsetsToTxnResponse)),
        ApiKey::EndTxn => Some(top_level!(m::EndTxnResponse)),
        ApiKey::DescribeAcls => Some(top_level!(m::DescribeAclsResponse)),
        ApiKey::DescribeCluster => Some(top_level!(m::DescribeClusterResponse)),
        ApiKey::ListTransactions => Some(top_level!(m::ListTransactionsResponse)),
        ApiKey::GetTelemetrySubscriptions => Some(top_level!(m::GetTelemetrySubscriptionsResponse)),
        ApiKey::PushTelemetry => Some(top_level!(m::PushTelemetryResponse)),
        ApiKey::CreateDelegationToken => Some(top_level!(m::CreateDelegationTokenResponse)),
        ApiKey::RenewDelegationToken => Some(top_level!(m::RenewDelegationTokenResponse)),
        ApiKey::ExpireDelegationToken => Some(top_level!(m::ExpireDelegationTokenResponse)),
        ApiKey::DescribeDelegationToken => Some(top_level!(m::DescribeDelegationTokenResponse)),
        ApiKey::AlterPartitionReassignments => {
            Some(top_level!(m::AlterPartitionReassignmentsResponse))
        }
        ApiKey::ListPartitionReassignments => {
            Some(top_level!(m::ListPartitionReassignmentsResponse))
        }
        ApiKey::DescribeClientQuotas => Some(top_level!(m::DescribeClientQuotasResponse)),
        ApiKey::DescribeUserScramCredentials => {
            Some(top_level!(m::DescribeUserScramCredentialsResponse))
        }
        ApiKey::DescribeQuorum => Some(top_level!(m::DescribeQuorumResponse)),
        ApiKey::UpdateFeatures => Some(top_level!(m::UpdateFeaturesResponse)),
        ApiKey::DescribeLogDirs => Some(top_level!(m::DescribeLogDirsResponse)),
        ApiKey::ElectLeaders if version >= 1 => Some(top_level!(m::ElectLeadersResponse)),
        _ => None,
    };
    if let Some(encoded) = generic {
        encoded.ok()?;
        let size = i32::try_from(out.len() - FRAME_PREFIX_LEN).ok()?;
        out[..FRAME_PREFIX_LEN].copy_from_slice(&size.to_be_bytes());
        return Some(out);
    }
    // Keys only this release knows.
    if let Some(encoded) = deny_own_keys(req.api_key, code, version, &mut out) {
        encoded.then_some(())?;
        let size = i32::try_from(out.len() - FRAME_PREFIX_LEN).ok()?;
        out[..FRAME_PREFIX_LEN].copy_from_slice(&size.to_be_bytes());
        return Some(out);
    }
    let body = body?;
    let encoded = match key {
        ApiKey::Produce => deny_produce(body, version).encode(&mut out, version),
        ApiKey::Fetch => deny_fetch(body, version).encode(&mut out, version),
        ApiKey::ListOffsets => deny_list_offsets(body).encode(&mut out, version),
        ApiKey::Metadata => deny_metadata(body, version).encode(&mut out, version),
        ApiKey::OffsetCommit => deny_offset_commit(body).encode(&mut out, version),
        ApiKey::OffsetFetch => deny_offset_fetch(body, version).encode(&mut out, version),
        ApiKey::FindCoordinator => {
            deny_find_coordinator(body, version, code).encode(&mut out, version)
        }
        ApiKey::AddPartitionsToTxn => deny_add_partitions_to_txn(body).encode(&mut out, version),
        ApiKey::OffsetForLeaderEpoch => m::OffsetForLeaderEpochResponse::default()
            .with_topics(
                topics_of(body)
                    .iter()
                    .map(|t| {
                        m::offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                            .with_topic(topic_name(t.name))
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|&p| {
                                        m::offset_for_leader_epoch_response::EpochEndOffset::default()
                                            .with_partition(p)
                                            .with_error_code(code)
                                            .with_leader_epoch(-1)
                                            .with_end_offset(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::TxnOffsetCommit => m::TxnOffsetCommitResponse::default()
            .with_topics(
                topics_of(body)
                    .iter()
                    .map(|t| {
                        m::txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                            .with_name(topic_name(t.name))
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|&p| {
                                        m::txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DescribeConfigs => m::DescribeConfigsResponse::default()
            .with_results(
                body.resources
                    .iter()
                    .map(|&(kind, name)| {
                        m::describe_configs_response::DescribeConfigsResult::default()
                            .with_error_code(super::config_resource_error(kind))
                            .with_resource_type(kind)
                            .with_resource_name(StrBytes::from_string(name.to_owned()))
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::CreateTopics => m::CreateTopicsResponse::default()
            .with_topics(
                topics_of(body)
                    .iter()
                    .map(|t| {
                        m::create_topics_response::CreatableTopicResult::default()
                            .with_name(topic_name(t.name))
                            .with_error_code(code)
                            .with_num_partitions(-1)
                            .with_replication_factor(-1)
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DeleteTopics => m::DeleteTopicsResponse::default()
            .with_responses(
                topics_of(body)
                    .iter()
                    .map(|t| {
                        m::delete_topics_response::DeletableTopicResult::default()
                            .with_name(t.name.map(|n| topic_name(Some(n))))
                            .with_topic_id(uuid::Uuid::from_bytes(t.id))
                            .with_error_code(code)
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DescribeGroups => m::DescribeGroupsResponse::default()
            .with_groups(
                body.names
                    .iter()
                    .map(|g| {
                        m::describe_groups_response::DescribedGroup::default()
                            .with_group_id(GroupId(StrBytes::from_string((*g).to_owned())))
                            .with_error_code(code)
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DeleteGroups => m::DeleteGroupsResponse::default()
            .with_results(
                body.names
                    .iter()
                    .map(|g| {
                        m::delete_groups_response::DeletableGroupResult::default()
                            .with_group_id(GroupId(StrBytes::from_string((*g).to_owned())))
                            .with_error_code(code)
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DeleteRecords => m::DeleteRecordsResponse::default()
            .with_topics(
                topics_of(body)
                    .iter()
                    .map(|t| {
                        m::delete_records_response::DeleteRecordsTopicResult::default()
                            .with_name(topic_name(t.name))
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|&p| {
                                        m::delete_records_response::DeleteRecordsPartitionResult::default()
                                            .with_partition_index(p)
                                            .with_low_watermark(-1)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::ElectLeaders => m::ElectLeadersResponse::default()
            .with_replica_election_results(
                topics_of(body)
                    .iter()
                    .map(|t| {
                        m::elect_leaders_response::ReplicaElectionResult::default()
                            .with_topic(topic_name(t.name))
                            .with_partition_result(
                                t.partitions
                                    .iter()
                                    .map(|&p| {
                                        m::elect_leaders_response::PartitionResult::default()
                                            .with_partition_id(p)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DescribeProducers => m::DescribeProducersResponse::default()
            .with_topics(
                topics_of(body)
                    .iter()
                    .map(|t| {
                        m::describe_producers_response::TopicResponse::default()
                            .with_name(topic_name(t.name))
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|&p| {
                                        m::describe_producers_response::PartitionResponse::default()
                                            .with_partition_index(p)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::CreatePartitions => m::CreatePartitionsResponse::default()
            .with_results(
                topics_of(body)
                    .iter()
                    .map(|t| {
                        m::create_partitions_response::CreatePartitionsTopicResult::default()
                            .with_name(topic_name(t.name))
                            .with_error_code(code)
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DescribeTopicPartitions => m::DescribeTopicPartitionsResponse::default()
            .with_topics(
                topics_of(body)
                    .iter()
                    .map(|t| {
                        m::describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                            .with_name(t.name.map(|n| topic_name(Some(n))))
                            .with_error_code(code)
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::AlterConfigs => m::AlterConfigsResponse::default()
            .with_responses(
                body.resources
                    .iter()
                    .map(|&(kind, name)| {
                        m::alter_configs_response::AlterConfigsResourceResponse::default()
                            .with_error_code(super::config_resource_error(kind))
                            .with_resource_type(kind)
                            .with_resource_name(StrBytes::from_string(name.to_owned()))
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::IncrementalAlterConfigs => m::IncrementalAlterConfigsResponse::default()
            .with_responses(
                body.resources
                    .iter()
                    .map(|&(kind, name)| {
                        m::incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                            .with_error_code(super::config_resource_error(kind))
                            .with_resource_type(kind)
                            .with_resource_name(StrBytes::from_string(name.to_owned()))
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::CreateAcls => m::CreateAclsResponse::default()
            .with_results(
                (0..body.items)
                    .map(|_| m::create_acls_response::AclCreationResult::default().with_error_code(code))
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DeleteAcls => m::DeleteAclsResponse::default()
            .with_filter_results(
                (0..body.items)
                    .map(|_| m::delete_acls_response::DeleteAclsFilterResult::default().with_error_code(code))
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::DescribeTransactions => m::DescribeTransactionsResponse::default()
            .with_transaction_states(
                body.names
                    .iter()
                    .map(|id| {
                        m::describe_transactions_response::TransactionState::default()
                            .with_error_code(code)
                            .with_transactional_id(m::TransactionalId(StrBytes::from_string((*id).to_owned())))
                            .with_producer_id(m::ProducerId(-1))
                            .with_producer_epoch(-1)
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        ApiKey::ConsumerGroupDescribe => m::ConsumerGroupDescribeResponse::default()
            .with_groups(
                body.names
                    .iter()
                    .map(|g| {
                        m::consumer_group_describe_response::DescribedGroup::default()
                            .with_group_id(GroupId(StrBytes::from_string((*g).to_owned())))
                            .with_error_code(code)
                    })
                    .collect(),
            )
            .encode(&mut out, version),
        _ => return None,
    };
    encoded.ok()?;
    let size = i32::try_from(out.len() - FRAME_PREFIX_LEN).ok()?;
    out[..FRAME_PREFIX_LEN].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

fn topic_name(name: Option<&str>) -> TopicName {
    TopicName(StrBytes::from_string(name.unwrap_or_default().to_owned()))
}

fn topics_of<'b, 'a>(body: &'b Body<'a>) -> &'b [Topic<'a>] {
    body.topics.as_deref().unwrap_or_default()
}

fn deny_produce(body: &Body<'_>, version: i16) -> kp::messages::ProduceResponse {
    use produce_response::*;
    ProduceResponse::default().with_responses(
        topics_of(body)
            .iter()
            .map(|t| {
                produce_topic_id(TopicProduceResponse::default(), t, version)
                    .with_name(topic_name(t.name))
                    .with_partition_responses(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                PartitionProduceResponse::default()
                                    .with_index(p)
                                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                    .with_base_offset(-1)
                                    .with_log_append_time_ms(-1)
                                    .with_log_start_offset(-1)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn deny_fetch(body: &Body<'_>, version: i16) -> kp::messages::FetchResponse {
    use fetch_response::*;
    FetchResponse::default().with_responses(
        topics_of(body)
            .iter()
            .map(|t| {
                let topic = FetchableTopicResponse::default().with_partitions(
                    t.partitions
                        .iter()
                        .map(|&p| {
                            PartitionData::default()
                                .with_partition_index(p)
                                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                .with_high_watermark(-1)
                        })
                        .collect(),
                );
                if version >= 13 {
                    topic.with_topic_id(uuid::Uuid::from_bytes(t.id))
                } else {
                    topic.with_topic(topic_name(t.name))
                }
            })
            .collect(),
    )
}

fn deny_list_offsets(body: &Body<'_>) -> kp::messages::ListOffsetsResponse {
    use list_offsets_response::*;
    ListOffsetsResponse::default().with_topics(
        topics_of(body)
            .iter()
            .map(|t| {
                ListOffsetsTopicResponse::default()
                    .with_name(topic_name(t.name))
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                ListOffsetsPartitionResponse::default()
                                    .with_partition_index(p)
                                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn deny_metadata(body: &Body<'_>, version: i16) -> kp::messages::MetadataResponse {
    use metadata_response::*;
    MetadataResponse::default().with_topics(
        topics_of(body)
            .iter()
            .map(|t| {
                let topic = MetadataResponseTopic::default()
                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                    .with_name(t.name.map(|n| topic_name(Some(n))));
                if version >= 10 {
                    topic.with_topic_id(uuid::Uuid::from_bytes(t.id))
                } else {
                    topic
                }
            })
            .collect(),
    )
}

fn deny_offset_commit(body: &Body<'_>) -> kp::messages::OffsetCommitResponse {
    use offset_commit_response::*;
    OffsetCommitResponse::default().with_topics(
        topics_of(body)
            .iter()
            .map(|t| {
                OffsetCommitResponseTopic::default()
                    .with_name(topic_name(t.name))
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn deny_offset_fetch(
    body: &Body<'_>,
    version: i16,
) -> kp::messages::OffsetFetchResponse {
    use offset_fetch_response::*;
    if version >= 8 {
        return OffsetFetchResponse::default().with_groups(
            body.groups
                .iter()
                .map(|g| {
                    let group = OffsetFetchResponseGroup::default()
                        .with_group_id(GroupId(StrBytes::from_string(g.id.to_owned())));
                    match &g.topics {
                        None => group.with_error_code(TOPIC_AUTHORIZATION_FAILED),
                        Some(topics) => group.with_topics(
                            topics
                                .iter()
                                .map(|t| {
                                    OffsetFetchResponseTopics::default()
                                        .with_name(topic_name(t.name))
                                        .with_partitions(
                                            t.partitions
                                                .iter()
                                                .map(|&p| {
                                                    OffsetFetchResponsePartitions::default()
                                                        .with_partition_index(p)
                                                        .with_committed_offset(-1)
                                                        .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        ),
                    }
                })
                .collect(),
        );
    }
    let response = OffsetFetchResponse::default().with_topics(
        topics_of(body)
            .iter()
            .map(|t| {
                OffsetFetchResponseTopic::default()
                    .with_name(topic_name(t.name))
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(-1)
                                    .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                            })
                            .collect(),
                    )
            })
            .collect(),
    );
    if version >= 2 {
        // The top-level error exists from v2; it is the only way to deny "all topics" (null).
        response.with_error_code(TOPIC_AUTHORIZATION_FAILED)
    } else {
        response
    }
}


fn deny_add_partitions_to_txn(
    body: &Body<'_>,
) -> kp::messages::AddPartitionsToTxnResponse {
    use kp::messages::add_partitions_to_txn_response::*;
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(
        topics_of(body)
            .iter()
            .map(|t| {
                AddPartitionsToTxnTopicResult::default()
                    .with_name(topic_name(t.name))
                    .with_results_by_partition(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                AddPartitionsToTxnPartitionResult::default()
                                    .with_partition_index(p)
                                    .with_partition_error_code(TOPIC_AUTHORIZATION_FAILED)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn deny_find_coordinator(
    body: &Body<'_>,
    version: i16,
    code: i16,
) -> kp::messages::FindCoordinatorResponse {
    use find_coordinator_response::*;
    if version >= 4 {
        return FindCoordinatorResponse::default().with_coordinators(
            body.coordinator_keys
                .iter()
                .map(|k| {
                    Coordinator::default()
                        .with_key(StrBytes::from_string((*k).to_owned()))
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(code)
                })
                .collect(),
        );
    }
    FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_node_id(BrokerId(-1))
        .with_port(-1)
}

