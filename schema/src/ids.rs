//! Id newtypes, so a company id is never passed where a connection id belongs.

macro_rules! id_type {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, sqlx::Type)]
        #[sqlx(transparent)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

id_type!(
    /// An operator team.
    AccountId,
    /// A person who administers an account.
    UserId,
    /// One connected provider account.
    ConnectionId,
    /// A customer company inside a connection: the unit of scope and the partition key.
    CompanyId,
);
