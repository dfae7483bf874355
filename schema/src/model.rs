//! The unified record model (DESIGN.md §4): what every provider adapter produces and the mirror
//! stores. Public ids are the provider's own ids. Money is a decimal with a currency, never a float.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The unified resources, in the order a sync visits them (owners before what they own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Client,
    Contact,
    Job,
    Invoice,
    LineItem,
    Payment,
    Attachment,
    Site,
    Visit,
    Staff,
    JobType,
    CustomField,
    TaxRate,
    Material,
}

impl Resource {
    pub const ALL: [Resource; 14] = [
        Resource::Client,
        Resource::Contact,
        Resource::Job,
        Resource::Invoice,
        Resource::LineItem,
        Resource::Payment,
        Resource::Attachment,
        Resource::Site,
        Resource::Visit,
        Resource::Staff,
        Resource::JobType,
        Resource::CustomField,
        Resource::TaxRate,
        Resource::Material,
    ];

    /// Beyond the seven core resources: what a connection may lack the provider's scopes for.
    pub fn is_supplementary(self) -> bool {
        !matches!(
            self,
            Resource::Client
                | Resource::Contact
                | Resource::Job
                | Resource::Invoice
                | Resource::LineItem
                | Resource::Payment
                | Resource::Attachment
                | Resource::Site
        )
    }

    /// Whether customers may delete records of this resource (where it is writable at all):
    /// clients and sites are companies at the provider, never deleted through this API.
    pub fn is_deletable(self) -> bool {
        !matches!(self, Resource::Client | Resource::Site)
    }

    /// Records the provider keeps once per account, not per customer: staff and the lookups.
    /// Every endpoint of the connection reads the same ones (from the mirror, like the rest);
    /// they are mirrored under the connection's account scope (see [`Owner::Account`]).
    pub fn is_account_wide(self) -> bool {
        matches!(
            self,
            Resource::Staff | Resource::JobType | Resource::CustomField | Resource::TaxRate | Resource::Material
        )
    }

    pub fn singular(self) -> &'static str {
        match self {
            Resource::Client => "client",
            Resource::Contact => "contact",
            Resource::Job => "job",
            Resource::Invoice => "invoice",
            Resource::LineItem => "line_item",
            Resource::Payment => "payment",
            Resource::Attachment => "attachment",
            Resource::Site => "site",
            Resource::Visit => "visit",
            Resource::Staff => "staff_member",
            Resource::JobType => "job_type",
            Resource::CustomField => "custom_field",
            Resource::TaxRate => "tax_rate",
            Resource::Material => "material",
        }
    }

    /// The plural, which is also the mirror table's name and the REST path segment.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Client => "clients",
            Resource::Contact => "contacts",
            Resource::Job => "jobs",
            Resource::Invoice => "invoices",
            Resource::LineItem => "line_items",
            Resource::Payment => "payments",
            Resource::Attachment => "attachments",
            Resource::Site => "sites",
            Resource::Visit => "visits",
            Resource::Staff => "staff",
            Resource::JobType => "job_types",
            Resource::CustomField => "custom_fields",
            Resource::TaxRate => "tax_rates",
            Resource::Material => "materials",
        }
    }

    /// The scope a key needs to read this resource: `jobs:read`.
    pub fn read_scope(self) -> String {
        format!("{}:read", self.plural())
    }

    /// The scope a key needs to write this resource: `jobs:write`.
    pub fn write_scope(self) -> String {
        format!("{}:write", self.plural())
    }

    /// Accepts the singular or the plural name.
    pub fn parse(name: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.singular() == name || r.plural() == name)
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.singular())
    }
}

/// How a record finds its company (the unit of scope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Owner {
    /// Directly: the company's (client's) provider id.
    Company(String),
    /// Through a job: the record belongs to whichever company owns the job, and moves with it.
    Job(String),
    /// The connection's account itself: staff and lookups, which every endpoint of the
    /// connection shares. Mirrored under the connection's account scope, a company of its own
    /// with the reserved external id [`ACCOUNT_SCOPE`], for which no endpoint is ever issued.
    Account,
    /// No company at all (counted by the sync, never exposed).
    Unowned,
}

impl Owner {
    pub fn company_ref(&self) -> Option<&String> {
        match self {
            Owner::Company(c) => Some(c),
            _ => None,
        }
    }

    pub fn job_ref(&self) -> Option<&String> {
        match self {
            Owner::Job(j) => Some(j),
            _ => None,
        }
    }
}

/// The external id of a connection's account scope in the company registry: empty, which no
/// provider id ever is.
pub const ACCOUNT_SCOPE: &str = "";

/// One provider record, mapped to the unified model, with its raw payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub external_id: String,
    pub owner: Owner,
    pub created_at: Option<DateTime<Utc>>,
    pub remote_updated_at: Option<DateTime<Utc>>,
    /// The provider marks it deleted (ServiceM8 `active = 0`): a tombstone in the mirror.
    pub deleted: bool,
    pub fields: Fields,
    pub remote_data: RawJson,
}

/// A provider object's JSON text exactly as it arrived: the mirror's `remote_data` is written
/// from it as is, never parsed into a tree and printed back out (at a million records that
/// round trip was a fifth of the sync process's CPU).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl From<&serde_json::value::RawValue> for RawJson {
    fn from(raw: &serde_json::value::RawValue) -> Self {
        Self(raw.to_owned())
    }
}

/// The same text is the same payload (what a record's equality needs; jsonb normalises later).
impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Record {
    pub fn resource(&self) -> Resource {
        self.fields.resource()
    }
}

/// The typed, unified columns of each resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "resource", rename_all = "snake_case")]
pub enum Fields {
    Client(ClientFields),
    Contact(ContactFields),
    Job(JobFields),
    Invoice(InvoiceFields),
    LineItem(LineItemFields),
    Payment(PaymentFields),
    Attachment(AttachmentFields),
    Site(SiteFields),
    Visit(VisitFields),
    Staff(StaffFields),
    JobType(JobTypeFields),
    CustomField(CustomFieldFields),
    TaxRate(TaxRateFields),
    Material(MaterialFields),
}

impl Fields {
    pub fn resource(&self) -> Resource {
        match self {
            Fields::Client(_) => Resource::Client,
            Fields::Contact(_) => Resource::Contact,
            Fields::Job(_) => Resource::Job,
            Fields::Invoice(_) => Resource::Invoice,
            Fields::LineItem(_) => Resource::LineItem,
            Fields::Payment(_) => Resource::Payment,
            Fields::Attachment(_) => Resource::Attachment,
            Fields::Site(_) => Resource::Site,
            Fields::Visit(_) => Resource::Visit,
            Fields::Staff(_) => Resource::Staff,
            Fields::JobType(_) => Resource::JobType,
            Fields::CustomField(_) => Resource::CustomField,
            Fields::TaxRate(_) => Resource::TaxRate,
            Fields::Material(_) => Resource::Material,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientFields {
    pub name: String,
    pub is_individual: bool,
    pub address: Option<String>,
    pub billing_address: Option<String>,
    pub website: Option<String>,
    /// A site's head office (ServiceM8 `parent_company_uuid`); sites share their head office's scope.
    pub parent_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContactFields {
    pub client_id: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub mobile: Option<String>,
    pub kind: Option<String>,
    pub is_primary: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobFields {
    pub client_id: Option<String>,
    pub number: Option<i64>,
    pub status: String,
    pub description: Option<String>,
    pub address: Option<String>,
    pub purchase_order: Option<String>,
    pub scheduled_on: Option<NaiveDate>,
    pub completed_at: Option<DateTime<Utc>>,
    pub total: Option<Decimal>,
    pub currency: String,
    /// The job type (ServiceM8 `category_uuid`).
    pub job_type_id: Option<String>,
    /// Custom field values by name (ServiceM8 `customfield_<name>`), as a JSON object's text.
    pub custom_fields: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InvoiceFields {
    pub client_id: Option<String>,
    pub job_id: Option<String>,
    pub number: Option<i64>,
    /// `draft`, `awaiting_payment` or `paid`.
    pub status: String,
    pub issued_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub total: Option<Decimal>,
    pub currency: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LineItemFields {
    pub job_id: Option<String>,
    pub invoice_id: Option<String>,
    pub name: String,
    pub quantity: Decimal,
    pub unit_price: Option<Decimal>,
    pub total: Option<Decimal>,
    pub currency: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PaymentFields {
    pub job_id: Option<String>,
    pub invoice_id: Option<String>,
    pub amount: Decimal,
    pub method: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
    pub note: Option<String>,
    pub is_deposit: bool,
    pub currency: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttachmentFields {
    pub job_id: Option<String>,
    pub related_object: Option<String>,
    pub related_object_id: Option<String>,
    pub name: String,
    pub file_type: Option<String>,
    pub source: Option<String>,
}

/// A site: a client's location (ServiceM8 a `company` with `parent_company_uuid`). A site is a
/// client too, and is also listed among clients.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteFields {
    /// The head office.
    pub client_id: Option<String>,
    pub name: String,
    pub address: Option<String>,
}

/// Scheduled work on a job (ServiceM8 `jobactivity`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VisitFields {
    pub job_id: Option<String>,
    pub staff_id: Option<String>,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    /// `scheduled` (booked ahead) or `recorded` (time logged on site).
    pub status: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StaffFields {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub job_title: Option<String>,
    pub active: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobTypeFields {
    pub name: String,
    pub colour: Option<String>,
}

/// A custom field a job may carry: its key in `custom_fields`, its type and allowed values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomFieldFields {
    pub name: String,
    pub label: Option<String>,
    /// `text`, `numeric`, `currency`, `date`, `datetime` or `choice`.
    pub field_type: String,
    /// The allowed values of a `choice` field, as a JSON array's text.
    pub choices: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaxRateFields {
    pub name: String,
    /// Percent.
    pub rate: Option<Decimal>,
    pub is_default: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MaterialFields {
    pub name: String,
    pub item_number: Option<String>,
    pub price: Option<Decimal>,
    pub tax_rate_id: Option<String>,
    pub currency: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_by_singular_or_plural_name() {
        for r in Resource::ALL {
            assert_eq!(Resource::parse(r.singular()), Some(r));
            assert_eq!(Resource::parse(r.plural()), Some(r));
        }
        assert_eq!(Resource::parse("jobz"), None);
    }
}
