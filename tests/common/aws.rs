//! Helpers of the tests against the AWS emulator moto_server (`INVALIDATOR_TEST_MOTO_URL`, default
//! the one scripts/moto.sh starts on 127.0.0.1:5055) and against local stub endpoints that answer
//! like CloudFront. moto completes invalidations at once and does not dedupe `CallerReference`s:
//! the tests check our own idempotency, not moto's.

use aws_sdk_cloudfront::types::{
    CookiePreference, CustomOriginConfig, DefaultCacheBehavior, DistributionConfig,
    ForwardedValues, ItemSelection, Origin, OriginProtocolPolicy, Origins, TrustedSigners,
    ViewerProtocolPolicy,
};

pub fn moto_url() -> String {
    std::env::var("INVALIDATOR_TEST_MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5055".into())
}

/// The environment a child `invalidator` needs to reach moto: static test credentials, a region,
/// and no instance-metadata lookup (it would leave the machine).
pub const CHILD_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
];

pub fn sdk() -> aws_config::SdkConfig {
    invalidator::apply::aws::emulator("us-east-1")
}

pub fn cloudfront(endpoint: &str) -> aws_sdk_cloudfront::Client {
    let conf = aws_sdk_cloudfront::config::Builder::from(&sdk())
        .endpoint_url(endpoint)
        .build();
    aws_sdk_cloudfront::Client::from_conf(conf)
}

/// A new distribution on moto; returns its id. (The legacy cache settings are what moto reads.)
#[allow(deprecated)]
pub async fn create_distribution(cf: &aws_sdk_cloudfront::Client) -> String {
    let origin = Origin::builder()
        .id("origin")
        .domain_name("shop.example.com")
        .custom_origin_config(
            CustomOriginConfig::builder()
                .http_port(80)
                .https_port(443)
                .origin_protocol_policy(OriginProtocolPolicy::HttpOnly)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let behavior = DefaultCacheBehavior::builder()
        .target_origin_id("origin")
        .viewer_protocol_policy(ViewerProtocolPolicy::AllowAll)
        .min_ttl(0)
        .forwarded_values(
            ForwardedValues::builder()
                .query_string(false)
                .cookies(
                    CookiePreference::builder()
                        .forward(ItemSelection::None)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .trusted_signers(
            TrustedSigners::builder()
                .enabled(false)
                .quantity(0)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let config = DistributionConfig::builder()
        .caller_reference(format!("test-{:016x}", rand::random::<u64>()))
        .comment("invalidator test")
        .enabled(true)
        .origins(
            Origins::builder()
                .quantity(1)
                .items(origin)
                .build()
                .unwrap(),
        )
        .default_cache_behavior(behavior)
        .build()
        .unwrap();
    let out = cf
        .create_distribution()
        .distribution_config(config)
        .send()
        .await
        .expect("moto_server must run (scripts/moto.sh)");
    out.distribution().unwrap().id().to_owned()
}

/// Every invalidation of `distribution` on moto: (id, caller reference, paths).
pub async fn invalidations(
    cf: &aws_sdk_cloudfront::Client,
    distribution: &str,
) -> Vec<(String, String, Vec<String>)> {
    let list = cf
        .list_invalidations()
        .distribution_id(distribution)
        .max_items(1000)
        .send()
        .await
        .expect("ListInvalidations");
    let mut out = Vec::new();
    for s in list
        .invalidation_list()
        .map(|l| l.items())
        .unwrap_or_default()
    {
        let inv = cf
            .get_invalidation()
            .distribution_id(distribution)
            .id(s.id())
            .send()
            .await
            .expect("GetInvalidation");
        let batch = inv.invalidation().unwrap().invalidation_batch().unwrap();
        out.push((
            s.id().to_owned(),
            batch.caller_reference().to_owned(),
            batch.paths().unwrap().items().to_vec(),
        ));
    }
    out
}

/// The body CloudFront answers an accepted `CreateInvalidation` with.
pub fn created_xml(id: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Invalidation xmlns="http://cloudfront.amazonaws.com/doc/2020-05-31/"><Id>{id}</Id><Status>InProgress</Status><CreateTime>2026-11-23T00:00:00Z</CreateTime><InvalidationBatch><Paths><Quantity>0</Quantity></Paths><CallerReference>x</CallerReference></InvalidationBatch></Invalidation>"#
    )
}

/// CloudFront's error document.
pub fn error_xml(code: &str, message: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<ErrorResponse xmlns="http://cloudfront.amazonaws.com/doc/2020-05-31/"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"#
    )
}

/// The `<Path>`s and the `<CallerReference>` of a `CreateInvalidation` request body.
pub fn request_paths(body: &[u8]) -> (Vec<String>, String) {
    let text = String::from_utf8_lossy(body);
    let between = |s: &str, open: &str, close: &str| -> Vec<String> {
        s.split(open)
            .skip(1)
            .filter_map(|p| p.split(close).next())
            .map(|p| p.replace("&amp;", "&"))
            .collect()
    };
    let paths = between(&text, "<Path>", "</Path>");
    let reference = between(&text, "<CallerReference>", "</CallerReference>")
        .pop()
        .unwrap_or_default();
    (paths, reference)
}
