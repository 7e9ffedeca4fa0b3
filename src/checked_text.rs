//! Values the registry keeps in TEXT columns and reads back only as what
//! they were: a user ID, an email address, one of an enum's names. A column
//! that does not parse is a decode error, not a stray string.

/// For a type checked once when it enters, with `as_str` and
/// `parse(&str) -> Result<Self, E>`: `Display`, a JSON string and a TEXT
/// column (sqlx `Any`: SQLite and PostgreSQL alike), read back through
/// `$parse` (`$name::parse` unless given).
macro_rules! checked_text {
    ($name:ident) => {
        $crate::checked_text::checked_text!($name, $name::parse);
    };
    ($name:ident, $parse:expr) => {
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // `pad`, so a width (`{:<10}`) applies.
                f.pad(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::Any> for $name {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <str as sqlx::Type<sqlx::Any>>::type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Any> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer,
            ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <String as sqlx::Encode<'q, sqlx::Any>>::encode(self.as_str().to_owned(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Any> for $name {
            fn decode(
                value: <sqlx::Any as sqlx::Database>::ValueRef<'r>,
            ) -> std::result::Result<$name, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                Ok($parse(text)?)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

/// Declares an enum kept by name: each variant written `Variant = "name"`.
/// It gets `ALL`, `as_str`, `from_name`, `Display`, JSON both ways and a
/// TEXT column, so a name is written once.
macro_rules! stored_as_text {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$variant_meta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value stored as `text`, if it is one.
            pub fn from_name(text: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|value| value.as_str() == text)
            }
        }

        $crate::checked_text::checked_text!($name, |text: &str| {
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

pub(crate) use {checked_text, stored_as_text};
