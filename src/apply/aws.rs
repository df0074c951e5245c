//! The AWS configuration shared by the CloudFront targets and the SNS notifier: loaded once at
//! start from the standard chain (environment, shared profile, SSO, web identity, ECS, instance
//! metadata). Credentials are never logged.

use aws_config::{BehaviorVersion, SdkConfig};

/// The standard AWS chain.
pub async fn load() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// Static test credentials and a region, for emulators (tests, benchmarks): nothing is looked up.
pub fn emulator(region: &str) -> SdkConfig {
    use aws_config::Region;
    use aws_sdk_cloudfront::config::{Credentials, SharedCredentialsProvider};
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "testing", "testing", None, None, "emulator",
        )))
        .build()
}
