//! Billing: invoices per patient from what the pharmacy dispensed to them and the consultations
//! they completed, the payments and refunds taken against them, and the [`Money`] it is all
//! counted in.
//!
//! Money is exact. [`Money`] is a whole number of cents, parsed from and shown as a plain decimal
//! string (`"12.50"`), and it crosses into PostgreSQL `numeric` as cents, never through a float:
//! `(amount * 100)::bigint` when read, `($n::bigint / 100.0)::numeric(14, 2)` when written. An
//! invoice paid in two hundred instalments balances to the cent.
//!
//! An invoice goes draft → issued → partially_paid → paid (a refund takes it back), or, while
//! nothing is paid on it, to void. Invoices are plain rows owned by no actor: every change is one
//! transaction that locks the invoice row (`FOR UPDATE`), so concurrent payments are judged one
//! after the other against the balance each one really leaves, and appends its audit entry naming
//! the patient. A payment is known by its reference: a retry with the same reference answers the
//! payment already recorded instead of counting it twice (`payments` is unique on invoice,
//! reference and kind).
//!
//! An item is billed at most once (`invoice_lines.dispense_id` and `.appointment_id` are unique).
//! Voiding keeps an invoice's lines for the record but moves those ids to `released_dispense_id`
//! and `released_appointment_id` (migration 0005), so the items are billable again.
//!
//! Invoices are patient data. Every read is audited (one entry per patient named) and committed
//! before the data is handed back; audit entries carry numbers, amounts and statuses, never what
//! was dispensed. Admins and pharmacists ([`BILLING_STAFF`]) do everything; a patient-role user
//! reads only the invoices of the patient record linked to them; every other role is refused, and
//! the refusal is recorded ([`record_refusal`]).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row};
use tracing::info;
use uuid::Uuid;

use crate::audit::{self, AuditRecord, Outcome};
use crate::domain::{Caller, Role};
use crate::error::ActorError;

/// Who may create, issue, void invoices, take payments and refund, and read any invoice.
pub const BILLING_STAFF: &[Role] = &[Role::Admin, Role::Pharmacist];
/// Who may read invoices at all (a patient only those of their own record).
pub const INVOICE_READERS: &[Role] = &[Role::Admin, Role::Pharmacist, Role::Patient];
/// The most invoices one list returns.
pub const MAX_LIST: i64 = 500;

fn invalid(field: &'static str, detail: impl Into<String>) -> ActorError {
    ActorError::Invalid { field, detail: detail.into() }
}

// ---------------------------------------------------------------------------------------------
// Money

/// An exact, non-negative amount of money in cents (hundredths of the invoice's currency), at most
/// what a `numeric(14, 2)` column holds. Written and read as a plain decimal string: `"12.50"`,
/// `"12.5"` and `"12"` in, always `"12.50"` out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);
    /// 999 999 999 999.99, the largest `numeric(14, 2)`.
    pub const MAX: Money = Money(99_999_999_999_999);
    const MAX_WHOLE_DIGITS: usize = 12;

    /// `None` unless `0 <= cents <= MAX`.
    pub fn from_cents(cents: i64) -> Option<Money> {
        (0..=Money::MAX.0).contains(&cents).then_some(Money(cents))
    }

    pub fn cents(self) -> i64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// An amount as a client writes it, refused under the field name `amount`.
    pub fn parse(text: &str) -> Result<Money, ActorError> {
        Money::parse_field("amount", text)
    }

    /// Digits, optionally a point and one or two more digits; nothing else (no sign, exponent,
    /// spaces or thousands separators), and at most [`Money::MAX`].
    pub fn parse_field(field: &'static str, text: &str) -> Result<Money, ActorError> {
        let refuse = |why: &str| invalid(field, format!("{field} {text:?} {why}; write a plain decimal such as \"12.50\""));
        if text.is_empty() {
            return Err(refuse("is empty"));
        }
        if text.starts_with('-') {
            return Err(refuse("is negative"));
        }
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (text, None),
        };
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !fraction.is_none_or(digits) {
            return Err(refuse("is not a plain decimal number"));
        }
        if fraction.is_some_and(|fraction| fraction.len() > 2) {
            return Err(refuse("has more than 2 decimal places (amounts are exact to the cent)"));
        }
        let whole = whole.trim_start_matches('0');
        if whole.len() > Money::MAX_WHOLE_DIGITS {
            return Err(refuse(&format!("is more than {}", Money::MAX)));
        }
        // At most 12 digits, so these cannot overflow.
        let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| refuse("is not a plain decimal number"))? };
        let cents: i64 = match fraction {
            None => 0,
            Some(fraction) if fraction.len() == 1 => 10 * i64::from(fraction.as_bytes()[0] - b'0'),
            Some(fraction) => fraction.parse().map_err(|_| refuse("is not a plain decimal number"))?,
        };
        Ok(Money(whole * 100 + cents))
    }

    /// `None` when the sum would exceed [`Money::MAX`].
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).and_then(Money::from_cents)
    }

    /// `None` when `other` is larger (money does not go below zero).
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).and_then(Money::from_cents)
    }

    /// A unit price times a quantity; `None` when the product would exceed [`Money::MAX`].
    pub fn times(self, quantity: u32) -> Option<Money> {
        self.0.checked_mul(i64::from(quantity)).and_then(Money::from_cents)
    }

    /// The exact sum, or `None` if it would exceed [`Money::MAX`].
    pub fn sum(amounts: impl IntoIterator<Item = Money>) -> Option<Money> {
        amounts.into_iter().try_fold(Money::ZERO, Money::checked_add)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl TryFrom<String> for Money {
    type Error = ActorError;
    fn try_from(value: String) -> Result<Self, ActorError> {
        Money::parse(&value)
    }
}

impl From<Money> for String {
    fn from(money: Money) -> String {
        money.to_string()
    }
}

/// Reads a `(column * 100)::bigint` value; what the database holds went in through [`Money`].
fn money_column(row: &PgRow, column: &str) -> Result<Money, sqlx::Error> {
    let cents: i64 = row.try_get(column)?;
    Money::from_cents(cents).ok_or_else(|| decode_error(format!("{column} holds {cents} cents, outside 0..={}", Money::MAX.0)))
}

// ---------------------------------------------------------------------------------------------
// Values of a request

/// Trimmed, 1 to `max` characters, one line (no control characters).
fn clean_text(field: &'static str, value: &str, max: usize) -> Result<String, ActorError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(field, format!("{field} must not be empty")));
    }
    if value.chars().count() > max {
        return Err(invalid(field, format!("{field} must be at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, format!("{field} must be one line of text, without control characters")));
    }
    Ok(value.to_owned())
}

/// What identifies a payment outside medhub: a receipt number, a card slip, an M-Pesa code.
/// 1 to 100 characters on one line. Reusing one on the same invoice is a retry, not a new payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Reference(String);

impl Reference {
    pub fn parse(value: &str) -> Result<Reference, ActorError> {
        clean_text("reference", value, 100).map(Reference)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Reference {
    type Error = ActorError;
    fn try_from(value: String) -> Result<Self, ActorError> {
        Reference::parse(&value)
    }
}

/// Why an invoice was voided, 1 to 500 characters on one line. Kept on the invoice, not in the
/// audit trail (free text may say more about the patient than the trail should hold).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct VoidReason(String);

impl VoidReason {
    pub fn parse(value: &str) -> Result<VoidReason, ActorError> {
        clean_text("reason", value, 500).map(VoidReason)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VoidReason {
    type Error = ActorError;
    fn try_from(value: String) -> Result<Self, ActorError> {
        VoidReason::parse(&value)
    }
}

/// Where an invoice is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Draft,
    Issued,
    PartiallyPaid,
    Paid,
    Void,
}

impl InvoiceStatus {
    pub const ALL: [InvoiceStatus; 5] =
        [InvoiceStatus::Draft, InvoiceStatus::Issued, InvoiceStatus::PartiallyPaid, InvoiceStatus::Paid, InvoiceStatus::Void];

    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Issued => "issued",
            InvoiceStatus::PartiallyPaid => "partially_paid",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
        }
    }

    pub fn parse(value: &str) -> Result<InvoiceStatus, ActorError> {
        InvoiceStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
            .ok_or_else(|| invalid("status", format!("status {value:?} must be one of draft, issued, partially_paid, paid, void")))
    }
}

impl fmt::Display for InvoiceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How money changed hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Cash,
    Card,
    MobileMoney,
}

impl PaymentMethod {
    pub const ALL: [PaymentMethod; 3] = [PaymentMethod::Cash, PaymentMethod::Card, PaymentMethod::MobileMoney];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::Cash => "cash",
            PaymentMethod::Card => "card",
            PaymentMethod::MobileMoney => "mobile_money",
        }
    }

    fn from_column(value: &str) -> Result<PaymentMethod, sqlx::Error> {
        PaymentMethod::ALL.into_iter().find(|method| method.as_str() == value).ok_or_else(|| decode_error(format!("payment method {value:?}")))
    }
}

/// Money in (a payment) or back out (a refund).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentKind {
    Payment,
    Refund,
}

impl PaymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Payment => "payment",
            PaymentKind::Refund => "refund",
        }
    }

    fn action(self) -> &'static str {
        match self {
            PaymentKind::Payment => "invoice.payment",
            PaymentKind::Refund => "invoice.refund",
        }
    }

    fn from_column(value: &str) -> Result<PaymentKind, sqlx::Error> {
        match value {
            "payment" => Ok(PaymentKind::Payment),
            "refund" => Ok(PaymentKind::Refund),
            other => Err(decode_error(format!("payment kind {other:?}"))),
        }
    }
}

/// What a line bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    Medication,
    Consultation,
    Other,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Medication => "medication",
            LineKind::Consultation => "consultation",
            LineKind::Other => "other",
        }
    }

    fn from_column(value: &str) -> Result<LineKind, sqlx::Error> {
        match value {
            "medication" => Ok(LineKind::Medication),
            "consultation" => Ok(LineKind::Consultation),
            "other" => Ok(LineKind::Other),
            other => Err(decode_error(format!("invoice line kind {other:?}"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What is stored and shown

/// An invoice without its lines and payments, as lists show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvoiceSummary {
    pub id: Uuid,
    /// `INV-<year>-<6 digits>`, unique within the tenant, counting from 1 each year.
    pub number: String,
    pub patient_id: Uuid,
    pub status: InvoiceStatus,
    pub currency: String,
    pub total: Money,
    pub paid: Money,
    /// `total - paid`: what a payment may be at most.
    pub balance: Money,
    /// Starts at 1; every change adds one.
    pub version: i64,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub issued_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub voided_at: Option<DateTime<Utc>>,
    pub void_reason: Option<String>,
}

/// One line of an invoice. `dispense_id` / `appointment_id` name the item billed (on a void
/// invoice, the item it had billed, which is billable again).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvoiceLine {
    pub id: Uuid,
    pub kind: LineKind,
    pub description: String,
    pub quantity: i32,
    pub unit_price: Money,
    pub amount: Money,
    pub dispense_id: Option<Uuid>,
    pub appointment_id: Option<Uuid>,
}

/// Money taken for (a payment) or given back on (a refund) an invoice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payment {
    pub id: Uuid,
    pub invoice_id: Uuid,
    pub kind: PaymentKind,
    pub method: PaymentMethod,
    pub amount: Money,
    pub reference: String,
    pub received_by: Uuid,
    pub received_at: DateTime<Utc>,
}

/// An invoice with its lines (in billing order) and payments (oldest first).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invoice {
    #[serde(flatten)]
    pub summary: InvoiceSummary,
    pub lines: Vec<InvoiceLine>,
    pub payments: Vec<Payment>,
}

/// The answer to a payment or refund: what was recorded, the invoice after it, and whether this
/// request recorded it (`false`: a retry of a reference already recorded, nothing changed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Receipt {
    #[serde(flatten)]
    pub payment: Payment,
    pub invoice: InvoiceSummary,
    #[serde(skip)]
    pub created: bool,
}

/// Filters for [`list`]; they combine with AND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceFilter {
    pub patient_id: Option<Uuid>,
    pub status: Option<InvoiceStatus>,
    /// 1 to [`MAX_LIST`].
    pub limit: i64,
}

/// A page of invoices, newest first; `more`: further invoices matched.
#[derive(Debug, Clone, Serialize)]
pub struct InvoiceList {
    pub invoices: Vec<InvoiceSummary>,
    pub more: bool,
}

// ---------------------------------------------------------------------------------------------
// The rules (pure)

/// Draft → issued.
pub fn check_issue(number: &str, status: InvoiceStatus) -> Result<(), ActorError> {
    match status {
        InvoiceStatus::Draft => Ok(()),
        other => Err(ActorError::Conflict(format!("invoice {number} is {other}; only a draft can be issued"))),
    }
}

/// What a payment of `amount` makes of an invoice: the new paid amount and status. It may be at
/// most the balance (`total - paid`), and is refused naming the balance otherwise.
pub fn apply_payment(number: &str, status: InvoiceStatus, total: Money, paid: Money, amount: Money) -> Result<(Money, InvoiceStatus), ActorError> {
    match status {
        InvoiceStatus::Draft => {
            return Err(ActorError::Conflict(format!("invoice {number} is a draft; issue it before taking payments")))
        }
        InvoiceStatus::Void => return Err(ActorError::Conflict(format!("invoice {number} is void; it takes no payments"))),
        InvoiceStatus::Issued | InvoiceStatus::PartiallyPaid | InvoiceStatus::Paid => {}
    }
    if amount.is_zero() {
        return Err(invalid("amount", "amount must be more than 0.00"));
    }
    let balance = total.checked_sub(paid).unwrap_or(Money::ZERO);
    if amount > balance {
        return Err(invalid(
            "amount",
            format!("amount {amount} is more than the balance of invoice {number}, which is {balance}; take at most {balance}"),
        ));
    }
    let paid = paid.checked_add(amount).unwrap_or(total);
    Ok((paid, if paid == total { InvoiceStatus::Paid } else { InvoiceStatus::PartiallyPaid }))
}

/// What a refund of `amount` makes of an invoice: at most what was paid; back to partially paid,
/// or to issued once nothing is paid any more.
pub fn apply_refund(number: &str, status: InvoiceStatus, paid: Money, amount: Money) -> Result<(Money, InvoiceStatus), ActorError> {
    match status {
        InvoiceStatus::Draft => return Err(ActorError::Conflict(format!("invoice {number} is a draft; nothing was paid on it"))),
        InvoiceStatus::Void => return Err(ActorError::Conflict(format!("invoice {number} is void; nothing was paid on it"))),
        InvoiceStatus::Issued | InvoiceStatus::PartiallyPaid | InvoiceStatus::Paid => {}
    }
    if amount.is_zero() {
        return Err(invalid("amount", "amount must be more than 0.00"));
    }
    let Some(paid) = paid.checked_sub(amount) else {
        return Err(invalid(
            "amount",
            format!("amount {amount} is more than was paid on invoice {number}, which is {paid}; refund at most {paid}"),
        ));
    };
    Ok((paid, if paid.is_zero() { InvoiceStatus::Issued } else { InvoiceStatus::PartiallyPaid }))
}

/// Only an invoice with nothing paid on it (a draft, or issued and not paid, or paid and refunded
/// in full) can be voided.
pub fn check_void(number: &str, status: InvoiceStatus, paid: Money) -> Result<(), ActorError> {
    match status {
        InvoiceStatus::Draft | InvoiceStatus::Issued if paid.is_zero() => Ok(()),
        InvoiceStatus::Void => Err(ActorError::Conflict(format!("invoice {number} is already void"))),
        other => Err(ActorError::Conflict(format!(
            "invoice {number} is {other} with {paid} paid; refund the payments before voiding it"
        ))),
    }
}

/// The number of the `sequence`th invoice of `year`.
pub fn invoice_number(year: i32, sequence: i64) -> String {
    format!("INV-{year}-{sequence:06}")
}

/// How much of the tenant's billing a role may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAccess {
    /// Every invoice of the tenant.
    AnyPatient,
    /// Only the invoices of the patient record linked to the caller's own user.
    OwnRecord,
    Nothing,
}

pub fn read_access(role: Role) -> ReadAccess {
    match role {
        Role::Admin | Role::Pharmacist => ReadAccess::AnyPatient,
        Role::Patient => ReadAccess::OwnRecord,
        Role::Doctor | Role::Nurse | Role::Dispatcher => ReadAccess::Nothing,
    }
}

// ---------------------------------------------------------------------------------------------
// Persistence

fn decode_error(what: String) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

const INVOICE_COLUMNS: &str = "id, number, patient_id, status, currency, (total * 100)::bigint AS total_cents, \
                               (paid * 100)::bigint AS paid_cents, version, created_by, created_at, issued_at, updated_at, \
                               voided_at, void_reason";

const LINE_COLUMNS: &str = "id, kind, description, quantity, (unit_price * 100)::bigint AS unit_price_cents, \
                            (amount * 100)::bigint AS amount_cents, coalesce(dispense_id, released_dispense_id) AS item_dispense_id, \
                            coalesce(appointment_id, released_appointment_id) AS item_appointment_id";

const PAYMENT_COLUMNS: &str = "id, invoice_id, kind, method, (amount * 100)::bigint AS amount_cents, reference, received_by, received_at";

fn summary_from_row(row: &PgRow) -> Result<InvoiceSummary, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let status = InvoiceStatus::parse(&status).map_err(|e| decode_error(e.to_string()))?;
    let total = money_column(row, "total_cents")?;
    let paid = money_column(row, "paid_cents")?;
    Ok(InvoiceSummary {
        id: row.try_get("id")?,
        number: row.try_get("number")?,
        patient_id: row.try_get("patient_id")?,
        status,
        currency: row.try_get("currency")?,
        total,
        paid,
        balance: total.checked_sub(paid).unwrap_or(Money::ZERO),
        version: row.try_get("version")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        issued_at: row.try_get("issued_at")?,
        updated_at: row.try_get("updated_at")?,
        voided_at: row.try_get("voided_at")?,
        void_reason: row.try_get("void_reason")?,
    })
}

fn line_from_row(row: &PgRow) -> Result<InvoiceLine, sqlx::Error> {
    Ok(InvoiceLine {
        id: row.try_get("id")?,
        kind: LineKind::from_column(row.try_get("kind")?)?,
        description: row.try_get("description")?,
        quantity: row.try_get("quantity")?,
        unit_price: money_column(row, "unit_price_cents")?,
        amount: money_column(row, "amount_cents")?,
        dispense_id: row.try_get("item_dispense_id")?,
        appointment_id: row.try_get("item_appointment_id")?,
    })
}

fn payment_from_row(row: &PgRow) -> Result<Payment, sqlx::Error> {
    Ok(Payment {
        id: row.try_get("id")?,
        invoice_id: row.try_get("invoice_id")?,
        kind: PaymentKind::from_column(row.try_get("kind")?)?,
        method: PaymentMethod::from_column(row.try_get("method")?)?,
        amount: money_column(row, "amount_cents")?,
        reference: row.try_get("reference")?,
        received_by: row.try_get("received_by")?,
        received_at: row.try_get("received_at")?,
    })
}

/// The invoice of the caller's tenant, row-locked until the transaction ends when `lock`.
async fn find_invoice(conn: &mut PgConnection, tenant_id: Uuid, id: Uuid, lock: bool) -> Result<InvoiceSummary, ActorError> {
    let sql = format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1 AND tenant_id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = sqlx::query(&sql).bind(id).bind(tenant_id).fetch_optional(conn).await?;
    match row {
        Some(row) => Ok(summary_from_row(&row)?),
        None => Err(ActorError::NotFound("invoice")),
    }
}

/// The invoice with its lines and payments, read inside `conn`'s transaction.
async fn with_details(conn: &mut PgConnection, summary: InvoiceSummary) -> Result<Invoice, ActorError> {
    let lines = sqlx::query(&format!("SELECT {LINE_COLUMNS} FROM invoice_lines WHERE invoice_id = $1 ORDER BY line_no, id"))
        .bind(summary.id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(line_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let payments = sqlx::query(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE invoice_id = $1 ORDER BY received_at, id"))
        .bind(summary.id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(payment_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Invoice { summary, lines, payments })
}

/// The patient record linked to the caller's user, if any.
async fn linked_patient(conn: &mut PgConnection, caller: &Caller) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM patients WHERE user_id = $1 AND tenant_id = $2")
        .bind(caller.principal.user_id)
        .bind(caller.principal.tenant_id)
        .fetch_optional(conn)
        .await
}

/// Records, in its own transaction, that the caller was refused `action`, naming the invoice asked
/// for and its patient (looked up when only the invoice is known).
pub async fn record_refusal(
    pool: &PgPool,
    caller: &Caller,
    action: &str,
    invoice_id: Option<Uuid>,
    patient_id: Option<Uuid>,
    reason: &str,
) -> Result<(), ActorError> {
    let tenant_id = caller.principal.tenant_id;
    let patient_id = match (patient_id, invoice_id) {
        (Some(patient), _) => Some(patient),
        (None, Some(invoice)) => sqlx::query_scalar("SELECT patient_id FROM invoices WHERE id = $1 AND tenant_id = $2")
            .bind(invoice)
            .bind(tenant_id)
            .fetch_optional(pool)
            .await?,
        (None, None) => None,
    };
    let mut record = AuditRecord::by_caller(caller, action, "invoice", invoice_id.map(|id| id.to_string()).unwrap_or_default())
        .patient(patient_id)
        .outcome(Outcome::Denied)
        .detail(json!({"reason": reason}));
    if invoice_id.is_none() {
        record.resource_id = None;
    }
    audit::record(pool, tenant_id, &record).await?;
    Ok(())
}

/// Refuses (and records the refusal) unless the caller is billing staff.
async fn require_billing_staff(pool: &PgPool, caller: &Caller, action: &str, invoice_id: Option<Uuid>, patient_id: Option<Uuid>, doing: &str) -> Result<(), ActorError> {
    if caller.principal.has_role(BILLING_STAFF) {
        return Ok(());
    }
    let reason = format!("role {} may not {doing}", caller.principal.role);
    record_refusal(pool, caller, action, invoice_id, patient_id, &reason).await?;
    Err(ActorError::Forbidden(reason))
}

fn change_record(caller: &Caller, action: &str, invoice: &InvoiceSummary) -> AuditRecord {
    AuditRecord::by_caller(caller, action, "invoice", invoice.id).patient(Some(invoice.patient_id))
}

/// A line about to be written.
struct NewLine {
    kind: LineKind,
    description: String,
    quantity: u32,
    unit_price: Money,
    amount: Money,
    dispense_id: Option<Uuid>,
    appointment_id: Option<Uuid>,
}

/// Everything of the patient not yet on an invoice (lines of void invoices do not count): each
/// dispense at its own unit price, then each completed consultation at the doctor's fee (a fee of
/// 0 bills nothing, and the consultation stays billable for when a fee is set).
async fn billable_lines(conn: &mut PgConnection, tenant_id: Uuid, patient_id: Uuid) -> Result<Vec<NewLine>, ActorError> {
    let too_large = || ActorError::Conflict(format!("a line would be more than {}; bill it by hand", Money::MAX));
    let mut lines = Vec::new();
    let dispenses = sqlx::query(
        "SELECT d.id, d.quantity, (d.unit_price * 100)::bigint AS unit_price_cents, m.name
         FROM dispenses d JOIN medications m ON m.id = d.medication_id
         WHERE d.tenant_id = $1 AND d.patient_id = $2
           AND NOT EXISTS (SELECT 1 FROM invoice_lines l WHERE l.dispense_id = d.id)
         ORDER BY d.dispensed_at, d.id",
    )
    .bind(tenant_id)
    .bind(patient_id)
    .fetch_all(&mut *conn)
    .await?;
    for row in &dispenses {
        let quantity: i32 = row.try_get("quantity")?;
        let quantity = u32::try_from(quantity).map_err(|_| decode_error(format!("dispense quantity {quantity}")))?;
        let unit_price = money_column(row, "unit_price_cents")?;
        let name: String = row.try_get("name")?;
        lines.push(NewLine {
            kind: LineKind::Medication,
            description: format!("{name} × {quantity}"),
            quantity,
            unit_price,
            amount: unit_price.times(quantity).ok_or_else(too_large)?,
            dispense_id: Some(row.try_get("id")?),
            appointment_id: None,
        });
    }
    let consultations = sqlx::query(
        "SELECT a.id, doc.display_name, (a.starts_at AT TIME ZONE doc.timezone)::date AS local_day,
                (doc.consultation_fee * 100)::bigint AS fee_cents
         FROM appointments a JOIN doctors doc ON doc.id = a.doctor_id
         WHERE a.tenant_id = $1 AND a.patient_id = $2 AND a.status = 'completed' AND doc.consultation_fee > 0
           AND NOT EXISTS (SELECT 1 FROM invoice_lines l WHERE l.appointment_id = a.id)
         ORDER BY a.starts_at, a.id",
    )
    .bind(tenant_id)
    .bind(patient_id)
    .fetch_all(&mut *conn)
    .await?;
    for row in &consultations {
        let fee = money_column(row, "fee_cents")?;
        let doctor: String = row.try_get("display_name")?;
        let day: NaiveDate = row.try_get("local_day")?;
        lines.push(NewLine {
            kind: LineKind::Consultation,
            description: format!("Consultation: {doctor} {}", day.format("%Y-%m-%d")),
            quantity: 1,
            unit_price: fee,
            amount: fee,
            dispense_id: None,
            appointment_id: Some(row.try_get("id")?),
        });
    }
    Ok(lines)
}

/// The next invoice number of the tenant for `year`. The transaction-scoped advisory lock makes
/// concurrent creations in one tenant take their numbers one after the other; it is released at
/// commit, by which time the number is visible to the next.
async fn next_number(conn: &mut PgConnection, tenant_id: Uuid, year: i32) -> Result<String, ActorError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('medhub.invoice_number'), hashtext($1::text))")
        .bind(tenant_id)
        .execute(&mut *conn)
        .await?;
    let prefix = format!("INV-{year}-");
    let last: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(substring(number FROM length($2) + 1)::bigint), 0)
         FROM invoices WHERE tenant_id = $1 AND starts_with(number, $2) AND substring(number FROM length($2) + 1) ~ '^[0-9]{1,18}$'",
    )
    .bind(tenant_id)
    .bind(&prefix)
    .fetch_one(&mut *conn)
    .await?;
    Ok(invoice_number(year, last + 1))
}

/// Bills everything of the patient not billed yet (billing staff only): one draft invoice, its
/// lines and its audit entry in one transaction. 409 when there is nothing to bill.
#[tracing::instrument(name = "invoice.create", skip_all, fields(tenant = %caller.principal.tenant_slug, patient = %patient_id, invoice = tracing::field::Empty))]
pub async fn create_invoice(pool: &PgPool, caller: &Caller, patient_id: Uuid) -> Result<Invoice, ActorError> {
    require_billing_staff(pool, caller, "invoice.create", None, Some(patient_id), "create invoices").await?;
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    // One invoice creation per patient at a time: the second sees the first one's lines and does
    // not bill the same items. NO KEY UPDATE does not hold up inserts that merely reference the patient.
    let patient: Option<Uuid> = sqlx::query_scalar("SELECT id FROM patients WHERE id = $1 AND tenant_id = $2 FOR NO KEY UPDATE")
        .bind(patient_id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
    if patient.is_none() {
        return Err(invalid("patient_id", format!("patient {patient_id} is not a patient of this tenant")));
    }
    let lines = billable_lines(&mut tx, tenant_id, patient_id).await?;
    if lines.is_empty() {
        return Err(ActorError::Conflict(format!(
            "nothing to bill for patient {patient_id}: every dispense and completed consultation with a fee is already on an invoice"
        )));
    }
    let total = Money::sum(lines.iter().map(|line| line.amount))
        .ok_or_else(|| ActorError::Conflict(format!("the invoice would total more than {}; bill the items in parts", Money::MAX)))?;
    let now = Utc::now().trunc_subsecs(6);
    let number = next_number(&mut tx, tenant_id, now.year()).await?;
    let id = Uuid::new_v4();
    tracing::Span::current().record("invoice", tracing::field::display(id));
    let row = sqlx::query(&format!(
        "INSERT INTO invoices (id, tenant_id, patient_id, number, status, total, paid, created_by, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'draft', ($5::bigint / 100.0)::numeric(14, 2), 0, $6, $7, $7)
         RETURNING {INVOICE_COLUMNS}"
    ))
    .bind(id)
    .bind(tenant_id)
    .bind(patient_id)
    .bind(&number)
    .bind(total.cents())
    .bind(caller.principal.user_id)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let summary = summary_from_row(&row)?;
    for (line_no, line) in lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO invoice_lines (id, invoice_id, tenant_id, kind, description, quantity, unit_price, amount,
                                        dispense_id, appointment_id, line_no)
             VALUES ($1, $2, $3, $4, $5, $6, ($7::bigint / 100.0)::numeric(12, 2), ($8::bigint / 100.0)::numeric(14, 2),
                     $9, $10, $11)",
        )
        .bind(Uuid::new_v4())
        .bind(id)
        .bind(tenant_id)
        .bind(line.kind.as_str())
        .bind(&line.description)
        .bind(i32::try_from(line.quantity).unwrap_or(i32::MAX))
        .bind(line.unit_price.cents())
        .bind(line.amount.cents())
        .bind(line.dispense_id)
        .bind(line.appointment_id)
        .bind(i32::try_from(line_no).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
    }
    let record = change_record(caller, "invoice.create", &summary).detail(json!({
        "number": summary.number,
        "status": summary.status.as_str(),
        "currency": summary.currency,
        "total": summary.total.to_string(),
        "lines": lines.len(),
    }));
    let invoice = with_details(&mut tx, summary).await?;
    audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;
    info!(invoice = %id, number = %invoice.summary.number, total = %invoice.summary.total, "invoice created");
    Ok(invoice)
}

/// Issues a draft (billing staff only): from now on it takes payments.
#[tracing::instrument(name = "invoice.issue", skip_all, fields(tenant = %caller.principal.tenant_slug, invoice = %id))]
pub async fn issue(pool: &PgPool, caller: &Caller, id: Uuid) -> Result<Invoice, ActorError> {
    require_billing_staff(pool, caller, "invoice.issue", Some(id), None, "issue invoices").await?;
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    let current = find_invoice(&mut tx, tenant_id, id, true).await?;
    check_issue(&current.number, current.status)?;
    let row = sqlx::query(&format!(
        "UPDATE invoices SET status = 'issued', issued_at = now(), updated_at = now(), version = version + 1
         WHERE id = $1 AND tenant_id = $2 RETURNING {INVOICE_COLUMNS}"
    ))
    .bind(id)
    .bind(tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    let summary = summary_from_row(&row)?;
    let record = change_record(caller, "invoice.issue", &summary).detail(json!({
        "number": summary.number,
        "status": summary.status.as_str(),
        "total": summary.total.to_string(),
    }));
    let invoice = with_details(&mut tx, summary).await?;
    audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;
    info!(invoice = %id, number = %invoice.summary.number, "invoice issued");
    Ok(invoice)
}

/// Records a payment on an issued or partly paid invoice (billing staff only): at most the
/// balance. A retry with a reference already recorded for this invoice answers that payment
/// (`created: false`); the same reference with another amount or method is a conflict.
pub async fn record_payment(
    pool: &PgPool,
    caller: &Caller,
    id: Uuid,
    amount: Money,
    method: PaymentMethod,
    reference: Reference,
) -> Result<Receipt, ActorError> {
    move_money(pool, caller, id, PaymentKind::Payment, amount, method, reference).await
}

/// Gives back part or all of what was paid on an invoice (billing staff only); idempotent on the
/// reference like [`record_payment`].
pub async fn refund(
    pool: &PgPool,
    caller: &Caller,
    id: Uuid,
    amount: Money,
    method: PaymentMethod,
    reference: Reference,
) -> Result<Receipt, ActorError> {
    move_money(pool, caller, id, PaymentKind::Refund, amount, method, reference).await
}

#[tracing::instrument(name = "invoice.payment", skip_all, fields(tenant = %caller.principal.tenant_slug, invoice = %id, kind = kind.as_str()))]
async fn move_money(
    pool: &PgPool,
    caller: &Caller,
    id: Uuid,
    kind: PaymentKind,
    amount: Money,
    method: PaymentMethod,
    reference: Reference,
) -> Result<Receipt, ActorError> {
    let doing = match kind {
        PaymentKind::Payment => "record payments",
        PaymentKind::Refund => "refund payments",
    };
    require_billing_staff(pool, caller, kind.action(), Some(id), None, doing).await?;
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    // Payments on one invoice are judged one after the other, each against the balance the previous left.
    let current = find_invoice(&mut tx, tenant_id, id, true).await?;
    let earlier = sqlx::query(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE invoice_id = $1 AND reference = $2 AND kind = $3"))
        .bind(id)
        .bind(reference.as_str())
        .bind(kind.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = earlier {
        let payment = payment_from_row(&row)?;
        if payment.amount != amount || payment.method != method {
            return Err(ActorError::Conflict(format!(
                "reference {:?} was already used on invoice {} for a {} of {} by {}; a different {} needs its own reference",
                reference.as_str(),
                current.number,
                kind.as_str(),
                payment.amount,
                payment.method.as_str(),
                kind.as_str(),
            )));
        }
        // Nothing changes, but the caller is shown the invoice again: that is recorded too.
        let record = change_record(caller, kind.action(), &current).detail(json!({
            "number": current.number,
            "payment_id": payment.id,
            "amount": payment.amount.to_string(),
            "replayed": true,
        }));
        audit::append(&mut tx, tenant_id, &record).await?;
        tx.commit().await?;
        return Ok(Receipt { payment, invoice: current, created: false });
    }
    let (paid, status) = match kind {
        PaymentKind::Payment => apply_payment(&current.number, current.status, current.total, current.paid, amount)?,
        PaymentKind::Refund => apply_refund(&current.number, current.status, current.paid, amount)?,
    };
    let row = sqlx::query(&format!(
        "INSERT INTO payments (id, invoice_id, tenant_id, kind, method, amount, reference, received_by, received_at)
         VALUES ($1, $2, $3, $4, $5, ($6::bigint / 100.0)::numeric(14, 2), $7, $8, now())
         RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(id)
    .bind(tenant_id)
    .bind(kind.as_str())
    .bind(method.as_str())
    .bind(amount.cents())
    .bind(reference.as_str())
    .bind(caller.principal.user_id)
    .fetch_one(&mut *tx)
    .await?;
    let payment = payment_from_row(&row)?;
    let row = sqlx::query(&format!(
        "UPDATE invoices SET paid = ($3::bigint / 100.0)::numeric(14, 2), status = $4, updated_at = now(), version = version + 1
         WHERE id = $1 AND tenant_id = $2 RETURNING {INVOICE_COLUMNS}"
    ))
    .bind(id)
    .bind(tenant_id)
    .bind(paid.cents())
    .bind(status.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let invoice = summary_from_row(&row)?;
    let record = change_record(caller, kind.action(), &invoice).detail(json!({
        "number": invoice.number,
        "payment_id": payment.id,
        "method": method.as_str(),
        "amount": amount.to_string(),
        "paid": invoice.paid.to_string(),
        "balance": invoice.balance.to_string(),
        "status": invoice.status.as_str(),
    }));
    audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;
    info!(invoice = %id, number = %invoice.number, amount = %amount, status = %invoice.status, "{} recorded", kind.as_str());
    Ok(Receipt { payment, invoice, created: true })
}

/// Voids an invoice nothing is paid on (billing staff only). Its lines stay, for the record, but
/// the items they billed are released (billable again): their ids move from `dispense_id` /
/// `appointment_id` to `released_dispense_id` / `released_appointment_id`.
#[tracing::instrument(name = "invoice.void", skip_all, fields(tenant = %caller.principal.tenant_slug, invoice = %id))]
pub async fn void(pool: &PgPool, caller: &Caller, id: Uuid, reason: VoidReason) -> Result<Invoice, ActorError> {
    require_billing_staff(pool, caller, "invoice.void", Some(id), None, "void invoices").await?;
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    let current = find_invoice(&mut tx, tenant_id, id, true).await?;
    check_void(&current.number, current.status, current.paid)?;
    let released = sqlx::query(
        "UPDATE invoice_lines
         SET released_dispense_id = dispense_id, released_appointment_id = appointment_id, dispense_id = NULL, appointment_id = NULL
         WHERE invoice_id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let row = sqlx::query(&format!(
        "UPDATE invoices SET status = 'void', voided_at = now(), voided_by = $3, void_reason = $4, updated_at = now(),
                             version = version + 1
         WHERE id = $1 AND tenant_id = $2 RETURNING {INVOICE_COLUMNS}"
    ))
    .bind(id)
    .bind(tenant_id)
    .bind(caller.principal.user_id)
    .bind(reason.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let summary = summary_from_row(&row)?;
    let record = change_record(caller, "invoice.void", &summary).detail(json!({
        "number": summary.number,
        "status": summary.status.as_str(),
        "total": summary.total.to_string(),
        "released_lines": released,
    }));
    let invoice = with_details(&mut tx, summary).await?;
    audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;
    info!(invoice = %id, number = %invoice.summary.number, "invoice voided");
    Ok(invoice)
}

/// Reads one invoice with its lines and payments, if the caller may see it, and records the read
/// before returning it. A patient asking for someone else's invoice is told it does not exist (and
/// the attempt is recorded as denied); a role that may not read invoices gets `Forbidden`.
#[tracing::instrument(name = "invoice.read", skip_all, fields(tenant = %caller.principal.tenant_slug, invoice = %id))]
pub async fn get(pool: &PgPool, caller: &Caller, id: Uuid) -> Result<Invoice, ActorError> {
    let access = read_access(caller.principal.role);
    if access == ReadAccess::Nothing {
        let reason = format!("role {} may not read invoices", caller.principal.role);
        record_refusal(pool, caller, "invoice.read", Some(id), None, &reason).await?;
        return Err(ActorError::Forbidden(reason));
    }
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    let summary = find_invoice(&mut tx, tenant_id, id, false).await?;
    if access == ReadAccess::OwnRecord && linked_patient(&mut tx, caller).await? != Some(summary.patient_id) {
        let record = change_record(caller, "invoice.read", &summary)
            .outcome(Outcome::Denied)
            .detail(json!({"reason": "a patient may read only the invoices of their own record"}));
        audit::append(&mut tx, tenant_id, &record).await?;
        tx.commit().await?;
        return Err(ActorError::NotFound("invoice"));
    }
    let record = change_record(caller, "invoice.read", &summary).detail(json!({"number": summary.number}));
    let invoice = with_details(&mut tx, summary).await?;
    audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;
    Ok(invoice)
}

/// The tenant's invoices matching `filter`, newest first; a patient-role user gets only those of
/// their own record (asking for another patient's finds none). One `invoice.list` audit entry per
/// patient named, committed before the list is returned.
#[tracing::instrument(name = "invoice.list", skip_all, fields(tenant = %caller.principal.tenant_slug))]
pub async fn list(pool: &PgPool, caller: &Caller, filter: &InvoiceFilter) -> Result<InvoiceList, ActorError> {
    let access = read_access(caller.principal.role);
    if access == ReadAccess::Nothing {
        let reason = format!("role {} may not read invoices", caller.principal.role);
        record_refusal(pool, caller, "invoice.list", None, filter.patient_id, &reason).await?;
        return Err(ActorError::Forbidden(reason));
    }
    if !(1..=MAX_LIST).contains(&filter.limit) {
        return Err(invalid("limit", format!("limit must be between 1 and {MAX_LIST}")));
    }
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    let mut patient_id = filter.patient_id;
    if access == ReadAccess::OwnRecord {
        match (linked_patient(&mut tx, caller).await?, filter.patient_id) {
            (Some(own), None) => patient_id = Some(own),
            (Some(own), Some(asked)) if own == asked => {}
            _ => return Ok(InvoiceList { invoices: Vec::new(), more: false }),
        }
    }
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE tenant_id = "));
    sql.push_bind(tenant_id);
    if let Some(patient_id) = patient_id {
        sql.push(" AND patient_id = ").push_bind(patient_id);
    }
    if let Some(status) = filter.status {
        sql.push(" AND status = ").push_bind(status.as_str());
    }
    // One more than returned tells whether more matched.
    sql.push(" ORDER BY created_at DESC, number DESC LIMIT ").push_bind(filter.limit + 1);
    let rows = sql.build().fetch_all(&mut *tx).await?;
    let more = rows.len() as i64 > filter.limit;
    let invoices = rows.iter().take(filter.limit as usize).map(summary_from_row).collect::<Result<Vec<_>, _>>()?;
    let mut by_patient: BTreeMap<Uuid, Vec<&str>> = BTreeMap::new();
    for invoice in &invoices {
        by_patient.entry(invoice.patient_id).or_default().push(&invoice.number);
    }
    for (patient, numbers) in &by_patient {
        let mut record = AuditRecord::by_caller(caller, "invoice.list", "invoice", "")
            .patient(Some(*patient))
            .detail(json!({"invoices": numbers}));
        record.resource_id = None;
        audit::append(&mut tx, tenant_id, &record).await?;
    }
    tx.commit().await?;
    Ok(InvoiceList { invoices, more })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(text: &str) -> Money {
        Money::parse(text).unwrap()
    }

    fn field_of(result: Result<impl fmt::Debug, ActorError>) -> &'static str {
        match result {
            Err(ActorError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    fn conflict(result: Result<impl fmt::Debug, ActorError>) -> String {
        match result {
            Err(ActorError::Conflict(detail)) => detail,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn amounts_are_plain_decimals_to_the_cent() {
        assert_eq!(money("12.50").cents(), 1250);
        assert_eq!(money("12.5").cents(), 1250);
        assert_eq!(money("12").cents(), 1200);
        assert_eq!(money("0.01").cents(), 1);
        assert_eq!(money("0").cents(), 0);
        assert_eq!(money("007.05").cents(), 705);
        assert_eq!(money("999999999999.99"), Money::MAX);
        for bad in ["1.005", "1.500", "-1", "-0.01", "1e3", "1E3", "abc", "", " 1", "1 ", "+1", ".5", "5.", "1.2.3", "1,000.00", "0x10", "١٢", "1000000000000"] {
            assert_eq!(field_of(Money::parse(bad)), "amount", "{bad:?} is not an amount");
        }
        let ActorError::Invalid { detail, .. } = Money::parse("1.005").unwrap_err() else { unreachable!() };
        assert!(detail.contains("2 decimal places"), "{detail}");
        assert_eq!(field_of(Money::parse_field("unit_price", "x")), "unit_price");
    }

    #[test]
    fn amounts_are_written_with_two_decimals() {
        for (cents, text) in [(0, "0.00"), (1, "0.01"), (10, "0.10"), (1250, "12.50"), (100_000, "1000.00"), (Money::MAX.cents(), "999999999999.99")] {
            assert_eq!(Money::from_cents(cents).unwrap().to_string(), text);
            assert_eq!(money(text).cents(), cents, "{text} reads back");
        }
        assert_eq!(serde_json::to_value(money("3.3")).unwrap(), json!("3.30"));
        assert_eq!(serde_json::from_value::<Money>(json!("0.1")).unwrap().cents(), 10);
        assert!(serde_json::from_value::<Money>(json!(0.1)).is_err(), "a JSON number is a float; amounts are strings");
        assert!(serde_json::from_value::<Money>(json!("1.005")).is_err());
        assert_eq!(Money::from_cents(-1), None);
        assert_eq!(Money::from_cents(Money::MAX.cents() + 1), None);
    }

    #[test]
    fn arithmetic_is_exact_and_never_goes_below_zero_or_past_the_maximum() {
        // 0.1 × 3 and 0.1 + 0.2 are where floats go wrong.
        assert_eq!(money("0.10").times(3), Some(money("0.30")));
        assert_eq!(money("0.1").checked_add(money("0.2")), Some(money("0.3")));
        assert_eq!(money("33.33").times(3), Some(money("99.99")));
        let cents = Money::sum((0..10_000).map(|_| money("0.01"))).unwrap();
        assert_eq!(cents, money("100"));
        assert_eq!(money("266.94").checked_sub(money("0.01")), Some(money("266.93")));
        assert_eq!(money("1").checked_sub(money("1.01")), None);
        assert_eq!(Money::MAX.checked_add(money("0.01")), None);
        assert_eq!(Money::MAX.times(2), None);
        assert_eq!(Money::sum([Money::MAX, money("0.01")]), None);
        assert!(money("0.02") > money("0.01"));
    }

    #[test]
    fn a_payment_is_at_most_the_balance_and_the_last_cent_pays_the_invoice() {
        use InvoiceStatus::*;
        let (total, paid) = (money("100.00"), money("99.99"));
        assert_eq!(apply_payment("INV-1", Issued, total, Money::ZERO, money("40")).unwrap(), (money("40"), PartiallyPaid));
        assert_eq!(apply_payment("INV-1", PartiallyPaid, total, paid, money("0.01")).unwrap(), (total, Paid));
        let ActorError::Invalid { field, detail } = apply_payment("INV-1", PartiallyPaid, total, paid, money("0.02")).unwrap_err() else {
            panic!("an over-balance payment is invalid")
        };
        assert_eq!(field, "amount");
        assert!(detail.contains("0.01"), "the refusal names the balance: {detail}");
        assert_eq!(field_of(apply_payment("INV-1", Paid, total, total, money("0.01"))), "amount", "a paid invoice has a balance of 0.00");
        assert_eq!(field_of(apply_payment("INV-1", Issued, total, Money::ZERO, Money::ZERO)), "amount");
        assert!(conflict(apply_payment("INV-1", Draft, total, Money::ZERO, money("1"))).contains("issue it"));
        conflict(apply_payment("INV-1", Void, total, Money::ZERO, money("1")));
    }

    #[test]
    fn a_refund_is_at_most_what_was_paid() {
        use InvoiceStatus::*;
        assert_eq!(apply_refund("INV-1", Paid, money("100"), money("30")).unwrap(), (money("70"), PartiallyPaid));
        assert_eq!(apply_refund("INV-1", PartiallyPaid, money("70"), money("70")).unwrap(), (Money::ZERO, Issued));
        assert_eq!(field_of(apply_refund("INV-1", PartiallyPaid, money("70"), money("70.01"))), "amount");
        assert_eq!(field_of(apply_refund("INV-1", Issued, Money::ZERO, money("1"))), "amount");
        conflict(apply_refund("INV-1", Draft, Money::ZERO, money("1")));
        conflict(apply_refund("INV-1", Void, Money::ZERO, money("1")));
    }

    #[test]
    fn only_an_invoice_with_nothing_paid_can_be_voided_and_only_a_draft_issued() {
        use InvoiceStatus::*;
        assert!(check_void("INV-1", Draft, Money::ZERO).is_ok());
        assert!(check_void("INV-1", Issued, Money::ZERO).is_ok());
        assert!(conflict(check_void("INV-1", PartiallyPaid, money("5"))).contains("refund"));
        conflict(check_void("INV-1", Paid, money("5")));
        conflict(check_void("INV-1", Void, Money::ZERO));
        assert!(check_issue("INV-1", Draft).is_ok());
        for status in [Issued, PartiallyPaid, Paid, Void] {
            conflict(check_issue("INV-1", status));
        }
    }

    #[test]
    fn values_of_a_request_are_checked_at_the_edge() {
        assert_eq!(invoice_number(2026, 123), "INV-2026-000123");
        assert_eq!(invoice_number(2026, 1_234_567), "INV-2026-1234567");
        assert_eq!(Reference::parse(" MPESA-QX12 ").unwrap().as_str(), "MPESA-QX12");
        assert_eq!(field_of(Reference::parse("")), "reference");
        assert_eq!(field_of(Reference::parse(&"x".repeat(101))), "reference");
        assert_eq!(field_of(VoidReason::parse("\n")), "reason");
        for status in InvoiceStatus::ALL {
            assert_eq!(InvoiceStatus::parse(status.as_str()).unwrap(), status);
        }
        assert_eq!(field_of(InvoiceStatus::parse("open")), "status");
        assert_eq!(serde_json::from_value::<PaymentMethod>(json!("mobile_money")).unwrap(), PaymentMethod::MobileMoney);
        assert!(serde_json::from_value::<PaymentMethod>(json!("cheque")).is_err());
    }

    #[test]
    fn billing_staff_read_any_invoice_a_patient_their_own_and_clinical_staff_none() {
        for role in Role::ALL {
            let access = read_access(role);
            assert_eq!(BILLING_STAFF.contains(&role), access == ReadAccess::AnyPatient, "{role}");
            assert_eq!(INVOICE_READERS.contains(&role), access != ReadAccess::Nothing, "{role}");
        }
        assert_eq!(read_access(Role::Patient), ReadAccess::OwnRecord);
    }
}
