//! Enums the registry keeps in TEXT columns, by name: [`stored_as_text!`]
//! maps one to sqlx (the `Any` driver, on SQLite and PostgreSQL alike) and
//! to JSON strings, from its `as_str` and its list of values, so a column
//! read back is a value of the enum or a decode error, never a stray string.

/// For an enum with `pub fn as_str(self) -> &'static str` and
/// `pub const ALL: [Self; N]`.
macro_rules! stored_as_text {
    ($name:ident) => {
        impl $name {
            /// The value stored as `text`, if it is one.
            pub fn from_name(text: &str) -> Option<$name> {
                $name::ALL.into_iter().find(|value| value.as_str() == text)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // `pad`, so a width (`{:<10}`) applies.
                f.pad(self.as_str())
            }
        }

        $crate::checked_text::text_column!($name, |text: &str| {
            $name::from_name(text).ok_or_else(|| format!("{text:?} is not a {}", stringify!($name)))
        });

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<$name, D::Error> {
                let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                $name::from_name(&text)
                    .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a {}", stringify!($name))))
            }
        }
    };
}

pub(crate) use stored_as_text;
