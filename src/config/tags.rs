//! `[tags]`: where the cache writers keep their tags in Redis, and so how a tag is invalidated.
//!
//! The layout is read as written ([`TagsConfig`]) and resolved once into a [`TagLayout`], the
//! key shapes the Redis layer works with; a key that does not belong to the layout chosen is an
//! error naming it.

use serde::Deserialize;

use super::ConfigError;

/// The layouts by name (`[tags] layout`; `mode` is its older name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutName {
    /// `SADD {prefix}{tag} {key}` by writers; invalidation `SSCAN`+`UNLINK`+`SREM`.
    #[default]
    Set,
    /// `INCR {prefix}{tag}`; readers compare versions.
    Version,
    /// Symfony's `RedisTagAwareAdapter`.
    Symfony,
    /// Symfony's `TagAwareAdapter` over a Redis pool.
    SymfonyVersions,
    /// The Next.js cache handler `@fortedigital/nextjs-cache-handler` (`redis-strings`).
    Nextjs,
}

/// `[tags]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagsConfig {
    #[serde(default, alias = "mode")]
    pub layout: LayoutName,
    /// `set` and `version`: the prefix of a tag's key (default `tag:`).
    prefix: Option<String>,
    /// The framework layouts: the framework's namespace (Symfony) or key prefix (Next.js).
    namespace: Option<String>,
    /// Symfony: the Redis client's own key prefix (phpredis `OPT_PREFIX`, Predis `prefix`).
    client_prefix: Option<String>,
    /// Next.js: the handler's `sharedTagsKey` and `sharedTagsTtlKey`.
    shared_tags_key: Option<String>,
    shared_tags_ttl_key: Option<String>,
    /// Resolved by [`TagsConfig::resolve`].
    #[serde(skip)]
    resolved: Option<TagLayout>,
}

impl Default for TagsConfig {
    fn default() -> Self {
        let mut c = TagsConfig {
            layout: LayoutName::Set,
            prefix: None,
            namespace: None,
            client_prefix: None,
            shared_tags_key: None,
            shared_tags_ttl_key: None,
            resolved: None,
        };
        c.resolve().expect("the default layout resolves");
        c
    }
}

/// Symfony's marker between a namespace and a tag (`AbstractTagAwareAdapter::TAGS_PREFIX`), and
/// after a tag in `TagAwareAdapter`'s tag pool.
pub const SYMFONY_TAGS: &str = "\0tags\0";

/// Next.js: the prefix of the implicit tags (paths), which are also recorded as revalidated.
pub const NEXTJS_IMPLICIT: &str = "_N_T_";

/// How tags are kept in Redis, resolved from `[tags]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagLayout {
    /// A set per tag at `{set_prefix}{tag}` whose members name the keys tagged (the key is
    /// `{member_prefix}{member}`); invalidation `SSCAN`s it, `UNLINK`s the keys and `SREM`s
    /// exactly the members removed.
    Sets {
        set_prefix: String,
        member_prefix: String,
    },
    /// A counter per tag at `{prefix}{tag}`, increased.
    Versions { prefix: String },
    /// A version per tag at `{before}{tag}{after}`, removed (the next read of the tag makes a
    /// new one, older than no entry).
    VersionKeys { before: String, after: String },
    /// Next.js's maps (see [`NextJs`]).
    NextJs(NextJs),
}

/// The Redis layout of `@fortedigital/nextjs-cache-handler`'s `redis-strings` handler: entries
/// at `{key_prefix}{key}`, the hash `shared_tags` from key to the JSON array of its tags, the
/// hash `shared_tags_ttl` from key to its expiry, and the hash `revalidated_tags` from implicit
/// tag to the time (ms) it was revalidated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextJs {
    pub key_prefix: String,
    pub shared_tags: String,
    pub shared_tags_ttl: String,
    pub revalidated_tags: String,
}

impl TagLayout {
    /// The `set` layout at `prefix` (tests, and the default `tag:`).
    pub fn set(prefix: &str) -> TagLayout {
        TagLayout::Sets {
            set_prefix: prefix.to_owned(),
            member_prefix: String::new(),
        }
    }

    /// The `version` layout at `prefix`.
    pub fn version(prefix: &str) -> TagLayout {
        TagLayout::Versions {
            prefix: prefix.to_owned(),
        }
    }

    /// The key `tag` is kept at: its set, counter, version or (Next.js) the hash of every
    /// entry's tags, which is read to find the tag.
    pub fn key_of(&self, tag: &str) -> String {
        match self {
            TagLayout::Sets { set_prefix, .. } => format!("{set_prefix}{tag}"),
            TagLayout::Versions { prefix } => format!("{prefix}{tag}"),
            TagLayout::VersionKeys { before, after } => format!("{before}{tag}{after}"),
            TagLayout::NextJs(n) => n.shared_tags.clone(),
        }
    }
}

impl TagsConfig {
    /// The layout (resolved when the configuration was read).
    pub fn layout(&self) -> &TagLayout {
        self.resolved
            .as_ref()
            .expect("[tags] is resolved as the configuration is read")
    }

    /// Checks that every key given belongs to the layout, and resolves it.
    pub(super) fn resolve(&mut self) -> Result<(), ConfigError> {
        use LayoutName::*;
        self.check_keys()?;
        let text = |v: &Option<String>, default: &str| v.clone().unwrap_or_else(|| default.into());
        let non_empty = |key: &str, v: &Option<String>, default: &str| {
            let v = text(v, default);
            if v.is_empty() {
                return Err(ConfigError::key(
                    &format!("tags.{key}"),
                    "must not be empty",
                ));
            }
            Ok(v)
        };
        let namespace = text(&self.namespace, "");
        let client = text(&self.client_prefix, "");
        // Symfony's ids are `{namespace}:{key}`, or the key alone without a namespace.
        let symfony_ns = if namespace.is_empty() {
            String::new()
        } else {
            format!("{namespace}:")
        };
        let layout = match self.layout {
            Set => TagLayout::set(&non_empty("prefix", &self.prefix, "tag:")?),
            Version => TagLayout::version(&non_empty("prefix", &self.prefix, "tag:")?),
            Symfony => TagLayout::Sets {
                set_prefix: format!("{client}{symfony_ns}{SYMFONY_TAGS}"),
                member_prefix: client,
            },
            SymfonyVersions => TagLayout::VersionKeys {
                before: format!("{client}{symfony_ns}"),
                after: SYMFONY_TAGS.into(),
            },
            Nextjs => {
                let key = |k: &str, v: &Option<String>, d: &str| {
                    Ok::<_, ConfigError>(format!("{namespace}{}", non_empty(k, v, d)?))
                };
                TagLayout::NextJs(NextJs {
                    shared_tags: key("shared_tags_key", &self.shared_tags_key, "__sharedTags__")?,
                    shared_tags_ttl: key(
                        "shared_tags_ttl_key",
                        &self.shared_tags_ttl_key,
                        "__sharedTagsTtl__",
                    )?,
                    revalidated_tags: format!("{namespace}__revalidated_tags__"),
                    key_prefix: namespace,
                })
            }
        };
        self.resolved = Some(layout);
        Ok(())
    }

    /// Every key given belongs to the layout chosen.
    fn check_keys(&self) -> Result<(), ConfigError> {
        use LayoutName::*;
        let given = [
            ("prefix", self.prefix.is_some(), &[Set, Version][..]),
            (
                "namespace",
                self.namespace.is_some(),
                &[Symfony, SymfonyVersions, Nextjs],
            ),
            (
                "client_prefix",
                self.client_prefix.is_some(),
                &[Symfony, SymfonyVersions],
            ),
            ("shared_tags_key", self.shared_tags_key.is_some(), &[Nextjs]),
            (
                "shared_tags_ttl_key",
                self.shared_tags_ttl_key.is_some(),
                &[Nextjs],
            ),
        ];
        for (key, set, layouts) in given {
            if set && !layouts.contains(&self.layout) {
                let names: Vec<String> =
                    layouts.iter().map(|l| format!("`{}`", l.name())).collect();
                return Err(ConfigError::key(
                    &format!("tags.{key}"),
                    format!(
                        "only with layout {} (the layout is `{}`)",
                        names.join(" or "),
                        self.layout.name()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl LayoutName {
    fn name(self) -> &'static str {
        match self {
            LayoutName::Set => "set",
            LayoutName::Version => "version",
            LayoutName::Symfony => "symfony",
            LayoutName::SymfonyVersions => "symfony-versions",
            LayoutName::Nextjs => "nextjs",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn layout(toml: &str) -> TagLayout {
        Config::from_toml(toml).unwrap().tags.layout().clone()
    }

    #[test]
    fn the_layouts_resolve_to_the_frameworks_keys() {
        assert_eq!(layout(""), TagLayout::set("tag:"));
        assert_eq!(
            layout("[tags]\nmode = \"version\""),
            TagLayout::version("tag:")
        );
        assert_eq!(
            layout("[tags]\nlayout = \"version\"\nprefix = \"v:\""),
            TagLayout::version("v:")
        );
        assert_eq!(
            layout("[tags]\nlayout = \"symfony\"\nnamespace = \"shop\"\nclient_prefix = \"app1:\""),
            TagLayout::Sets {
                set_prefix: "app1:shop:\0tags\0".into(),
                member_prefix: "app1:".into()
            }
        );
        assert_eq!(
            layout("[tags]\nlayout = \"symfony\""),
            TagLayout::Sets {
                set_prefix: "\0tags\0".into(),
                member_prefix: "".into()
            }
        );
        assert_eq!(
            layout("[tags]\nlayout = \"symfony-versions\"\nnamespace = \"tags\""),
            TagLayout::VersionKeys {
                before: "tags:".into(),
                after: "\0tags\0".into()
            }
        );
        assert_eq!(
            layout("[tags]\nlayout = \"nextjs\"\nnamespace = \"next:\""),
            TagLayout::NextJs(NextJs {
                key_prefix: "next:".into(),
                shared_tags: "next:__sharedTags__".into(),
                shared_tags_ttl: "next:__sharedTagsTtl__".into(),
                revalidated_tags: "next:__revalidated_tags__".into(),
            })
        );
    }

    #[test]
    fn a_key_of_another_layout_is_named() {
        for (toml, msg) in [
            (
                "[tags]\nlayout = \"symfony\"\nprefix = \"t:\"",
                "config key `tags.prefix`: only with layout `set` or `version` (the layout is `symfony`)",
            ),
            (
                "[tags]\nnamespace = \"shop\"",
                "config key `tags.namespace`: only with layout `symfony` or `symfony-versions` or `nextjs` (the layout is `set`)",
            ),
            (
                "[tags]\nlayout = \"nextjs\"\nclient_prefix = \"x\"",
                "config key `tags.client_prefix`: only with layout `symfony` or `symfony-versions`",
            ),
            (
                "[tags]\nlayout = \"nextjs\"\nshared_tags_key = \"\"",
                "config key `tags.shared_tags_key`: must not be empty",
            ),
            (
                "[tags]\nlayout = \"laravel\"",
                "config key `tags.layout`: unknown variant: found `laravel`",
            ),
        ] {
            let e = Config::from_toml(toml).unwrap_err().0;
            assert!(e.starts_with(msg), "{toml}: {e}");
        }
    }
}
