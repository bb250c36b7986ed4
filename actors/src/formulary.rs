//! The starter formulary: a few hundred common essential medicines (drawn from the WHO Model List
//! of Essential Medicines, with their WHO ATC codes and plausible unit prices in Kenyan shillings)
//! that a new tenant can start dispensing from, and the loader that puts them in its
//! `medications` table.
//!
//! The list ships inside the binary ([`FORMULARY_CSV`], `actors/data/formulary.csv`) so that
//! `hub demo` needs no download. [`parse`] turns it, or any CSV of the same shape, into
//! [`FormularyEntry`] values whose ATC code and price are already checked, and names the line of
//! the first bad row; [`load`] inserts the whole list for a tenant in one statement and can be run
//! again safely: medications the tenant already has are left as they are.
//!
//! The CSV has the header `name,generic_name,atc_code,form,strength,unit,manufacturer,unit_price`,
//! one medication per line, and no quoting, so no field may contain a comma or a quote.

use std::collections::HashMap;
use std::fmt;

use sqlx::PgPool;
use thiserror::Error;
use tracing::info;
use uuid::Uuid;

/// The shipped starter formulary (see the module documentation for its shape).
pub const FORMULARY_CSV: &str = include_str!("../data/formulary.csv");

/// The columns a formulary CSV has, in order.
pub const COLUMNS: [&str; 8] = ["name", "generic_name", "atc_code", "form", "strength", "unit", "manufacturer", "unit_price"];

/// The pharmaceutical forms a formulary entry may have.
pub const DOSAGE_FORMS: [&str; 16] = [
    "tablet",
    "capsule",
    "oral suspension",
    "oral solution",
    "syrup",
    "injection",
    "infusion",
    "cream",
    "ointment",
    "eye drops",
    "inhaler",
    "suppository",
    "patch",
    "powder",
    "sachet",
    "gel",
];

/// A WHO ATC code of level 5 (one chemical substance or fixed combination): a letter, two
/// digits, two letters, two digits, e.g. `J01CA04` for amoxicillin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AtcCode(String);

impl AtcCode {
    /// `None` unless `code` is exactly a level-5 code (upper case, 7 characters).
    pub fn parse(code: &str) -> Option<AtcCode> {
        let bytes = code.as_bytes();
        let shape_holds = bytes.len() == 7
            && bytes[0].is_ascii_uppercase()
            && bytes[1..3].iter().all(u8::is_ascii_digit)
            && bytes[3..5].iter().all(u8::is_ascii_uppercase)
            && bytes[5..7].iter().all(u8::is_ascii_digit);
        shape_holds.then(|| AtcCode(code.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The level-4 group (chemical subgroup), e.g. `J01CA` (penicillins with extended spectrum):
    /// the substances a pharmacist may consider as alternatives to one another.
    pub fn group(&self) -> &str {
        &self.0[..5]
    }
}

impl fmt::Display for AtcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A price per dispensing unit, held exactly in cents (never a float). It fits the database's
/// `numeric(12, 2)`: at most ten digits before the decimal point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitPrice {
    cents: i64,
}

impl UnitPrice {
    const MAX_WHOLE_DIGITS: usize = 10;

    /// `None` unless `text` is a non-negative decimal with at most two decimals, like `12`,
    /// `12.5` or `12.50` (no sign, exponent or thousands separator).
    pub fn parse(text: &str) -> Option<UnitPrice> {
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (text, ""),
        };
        let digits_only = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
        if whole.is_empty() || whole.len() > Self::MAX_WHOLE_DIGITS || !digits_only(whole) {
            return None;
        }
        if fraction.len() > 2 || !digits_only(fraction) || (text.contains('.') && fraction.is_empty()) {
            return None;
        }
        let whole: i64 = whole.parse().ok()?;
        let fraction_cents: i64 = match fraction.len() {
            0 => 0,
            1 => fraction.parse::<i64>().ok()? * 10,
            _ => fraction.parse().ok()?,
        };
        Some(UnitPrice { cents: whole * 100 + fraction_cents })
    }

    pub fn cents(self) -> i64 {
        self.cents
    }
}

impl fmt::Display for UnitPrice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.cents / 100, self.cents % 100)
    }
}

/// One medication of a formulary, as it will be stored in `medications`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormularyEntry {
    /// The product as a pharmacist labels it, e.g. "Amoxicillin 500 mg capsule".
    pub name: String,
    /// The active ingredient(s) by INN, lower case; combinations as "artemether + lumefantrine".
    pub generic_name: String,
    pub atc_code: AtcCode,
    /// One of [`DOSAGE_FORMS`].
    pub form: String,
    /// E.g. "500 mg", "125 mg/5 mL", "100 micrograms/dose".
    pub strength: String,
    /// The dispensing unit the price is for: tablet, capsule, bottle, vial, ampoule, tube, ...
    pub unit: String,
    pub manufacturer: String,
    pub unit_price: UnitPrice,
}

/// Why a formulary CSV was refused. Line numbers count from 1, the header being line 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormularyError {
    #[error("line 1: the header must be `{expected}`, found `{found}`")]
    Header { expected: String, found: String },
    #[error("line {line}: {detail}")]
    Row { line: usize, detail: String },
}

impl FormularyError {
    /// The line of the CSV the problem is on.
    pub fn line(&self) -> usize {
        match self {
            FormularyError::Header { .. } => 1,
            FormularyError::Row { line, .. } => *line,
        }
    }
}

/// Parses a formulary CSV (see the module documentation), checking every row: eight non-empty
/// fields, a known dosage form, a level-5 ATC code, an exact price with at most two decimals, and
/// no two rows with the same name, form and strength (what the database keeps unique). Blank
/// lines are skipped; the first bad row is reported with its line number.
pub fn parse(csv: &str) -> Result<Vec<FormularyEntry>, FormularyError> {
    let mut lines = csv.lines().enumerate().map(|(index, text)| (index + 1, text));
    let header = lines.next().map_or("", |(_, text)| text);
    let expected_header = COLUMNS.join(",");
    if header.trim() != expected_header {
        return Err(FormularyError::Header { expected: expected_header, found: header.to_owned() });
    }

    let mut entries = Vec::new();
    let mut first_seen: HashMap<(String, String, String), usize> = HashMap::new();
    for (line, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        let entry = parse_row(text).map_err(|detail| FormularyError::Row { line, detail })?;
        let key = (entry.name.clone(), entry.form.clone(), entry.strength.clone());
        if let Some(earlier) = first_seen.insert(key, line) {
            return Err(FormularyError::Row {
                line,
                detail: format!(
                    "\"{}\" ({}, {}) is already on line {earlier}: name, form and strength together must be unique",
                    entry.name, entry.form, entry.strength
                ),
            });
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn parse_row(text: &str) -> Result<FormularyEntry, String> {
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    let field_count = fields.len();
    let Ok(fields) = <[&str; COLUMNS.len()]>::try_from(fields) else {
        return Err(format!(
            "has {field_count} fields, expected {} ({}); fields cannot contain commas",
            COLUMNS.len(),
            COLUMNS.join(", ")
        ));
    };
    for (column, value) in COLUMNS.iter().zip(fields) {
        if value.is_empty() {
            return Err(format!("{column} is empty"));
        }
        if value.contains('"') {
            return Err(format!("{column} contains a quote; quoting is not supported, write the value without quotes or commas"));
        }
    }
    let [name, generic_name, atc_code, form, strength, unit, manufacturer, unit_price] = fields;
    let atc_code = AtcCode::parse(atc_code).ok_or_else(|| {
        format!("atc_code \"{atc_code}\" is not a WHO ATC level-5 code (a letter, two digits, two letters, two digits, e.g. J01CA04)")
    })?;
    if !DOSAGE_FORMS.contains(&form) {
        return Err(format!("form \"{form}\" is not one of: {}", DOSAGE_FORMS.join(", ")));
    }
    let unit_price = UnitPrice::parse(unit_price).ok_or_else(|| {
        format!("unit_price \"{unit_price}\" is not a non-negative amount with at most two decimals (e.g. 12.50)")
    })?;
    Ok(FormularyEntry {
        name: name.to_owned(),
        generic_name: generic_name.to_owned(),
        atc_code,
        form: form.to_owned(),
        strength: strength.to_owned(),
        unit: unit.to_owned(),
        manufacturer: manufacturer.to_owned(),
        unit_price,
    })
}

/// Inserts the shipped formulary into `tenant_id`'s medications and returns how many were new.
/// Medications the tenant already has (same name, form and strength) are kept as they are, so
/// loading twice inserts nothing the second time.
pub async fn load(pool: &PgPool, tenant_id: Uuid) -> Result<usize, sqlx::Error> {
    // The shipped file is checked by this module's tests; failing here means a broken build.
    let entries = parse(FORMULARY_CSV).map_err(|error| sqlx::Error::Decode(Box::new(error)))?;

    let mut ids = Vec::with_capacity(entries.len());
    let mut names = Vec::with_capacity(entries.len());
    let mut generic_names = Vec::with_capacity(entries.len());
    let mut atc_codes = Vec::with_capacity(entries.len());
    let mut forms = Vec::with_capacity(entries.len());
    let mut strengths = Vec::with_capacity(entries.len());
    let mut units = Vec::with_capacity(entries.len());
    let mut manufacturers = Vec::with_capacity(entries.len());
    let mut prices = Vec::with_capacity(entries.len());
    for entry in &entries {
        ids.push(Uuid::new_v4());
        names.push(entry.name.as_str());
        generic_names.push(entry.generic_name.as_str());
        atc_codes.push(entry.atc_code.as_str());
        forms.push(entry.form.as_str());
        strengths.push(entry.strength.as_str());
        units.push(entry.unit.as_str());
        manufacturers.push(entry.manufacturer.as_str());
        // Prices travel as text and become numeric in the database: exact, never a float.
        prices.push(entry.unit_price.to_string());
    }

    // One statement for the whole list: a few hundred rows in one round trip, and all or none.
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO medications (id, tenant_id, name, generic_name, atc_code, form, strength, unit, manufacturer, unit_price)
         SELECT row.id, $1, row.name, row.generic_name, row.atc_code, row.form, row.strength, row.unit, row.manufacturer,
                row.unit_price::numeric(12, 2)
           FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
                AS row (id, name, generic_name, atc_code, form, strength, unit, manufacturer, unit_price)
         ON CONFLICT (tenant_id, name, form, strength) DO NOTHING",
    )
    .bind(tenant_id)
    .bind(&ids)
    .bind(&names)
    .bind(&generic_names)
    .bind(&atc_codes)
    .bind(&forms)
    .bind(&strengths)
    .bind(&units)
    .bind(&manufacturers)
    .bind(&prices)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;

    let inserted = usize::try_from(inserted).unwrap_or(usize::MAX);
    info!(tenant = %tenant_id, inserted, shipped = entries.len(), "starter formulary loaded");
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn shipped() -> Vec<FormularyEntry> {
        parse(FORMULARY_CSV).unwrap_or_else(|error| panic!("the shipped formulary must parse: {error}"))
    }

    fn entry<'a>(entries: &'a [FormularyEntry], name: &str) -> &'a FormularyEntry {
        entries.iter().find(|entry| entry.name == name).unwrap_or_else(|| panic!("\"{name}\" is in the formulary"))
    }

    const HEADER: &str = "name,generic_name,atc_code,form,strength,unit,manufacturer,unit_price";
    const GOOD_ROW: &str = "Amoxicillin 500 mg capsule,amoxicillin,J01CA04,capsule,500 mg,capsule,Generic,5.00";

    fn refusal(rows: &[&str]) -> FormularyError {
        let csv = [HEADER].iter().chain(rows).copied().collect::<Vec<_>>().join("\n");
        parse(&csv).expect_err("the bad row is refused")
    }

    #[test]
    fn the_shipped_formulary_parses_and_holds_a_few_hundred_medicines() {
        let entries = shipped();
        assert!(entries.len() >= 250, "only {} entries", entries.len());
    }

    #[test]
    fn every_shipped_atc_code_is_a_level_5_code() {
        for entry in shipped() {
            let code = entry.atc_code.as_str();
            assert_eq!(code.len(), 7, "{}: {code}", entry.name);
            assert!(AtcCode::parse(code).is_some(), "{}: {code}", entry.name);
            assert_eq!(entry.atc_code.group(), &code[..5]);
        }
    }

    #[test]
    fn well_known_medicines_carry_their_who_atc_codes() {
        let entries = shipped();
        let expected = [
            ("Amoxicillin 500 mg capsule", "J01CA04"),
            ("Amoxicillin 125 mg/5 mL oral suspension (100 mL)", "J01CA04"),
            ("Ampicillin 1 g injection", "J01CA01"),
            ("Paracetamol 500 mg tablet", "N02BE01"),
            ("Metformin 500 mg tablet", "A10BA02"),
            ("Amlodipine 5 mg tablet", "C08CA01"),
            ("Artemether + lumefantrine 20 mg/120 mg tablet", "P01BF01"),
            ("Ibuprofen 400 mg tablet", "M01AE01"),
            ("Naproxen 500 mg tablet", "M01AE02"),
            ("Omeprazole 20 mg capsule", "A02BC01"),
            ("Esomeprazole 40 mg tablet", "A02BC05"),
            ("Pantoprazole 40 mg tablet", "A02BC02"),
            ("Enalapril 10 mg tablet", "C09AA02"),
            ("Lisinopril 10 mg tablet", "C09AA03"),
            ("Captopril 25 mg tablet", "C09AA01"),
            ("Simvastatin 20 mg tablet", "C10AA01"),
            ("Atorvastatin 20 mg tablet", "C10AA05"),
            ("Rosuvastatin 10 mg tablet", "C10AA07"),
            ("Ceftriaxone 1 g injection", "J01DD04"),
            ("Ciprofloxacin 500 mg tablet", "J01MA02"),
            ("Ciprofloxacin 0.3% eye drops (5 mL)", "S01AE03"),
            ("Metronidazole 400 mg tablet", "P01AB01"),
            ("Metronidazole 500 mg/100 mL infusion", "J01XD01"),
            ("Sulfamethoxazole + trimethoprim 800 mg/160 mg tablet", "J01EE01"),
            ("Tenofovir disoproxil + lamivudine + dolutegravir 300 mg/300 mg/50 mg tablet", "J05AR27"),
            ("Rifampicin + isoniazid + pyrazinamide + ethambutol 150 mg/75 mg/400 mg/275 mg tablet", "J04AM06"),
            ("Salbutamol 100 micrograms/dose inhaler (200 doses)", "R03AC02"),
            ("Furosemide 40 mg tablet", "C03CA01"),
            ("Losartan 50 mg tablet", "C09CA01"),
            ("Acetylsalicylic acid 75 mg tablet", "B01AC06"),
            ("Oxytocin 10 IU/mL injection", "H01BB02"),
            ("Albendazole 400 mg tablet", "P02CA03"),
        ];
        for (name, code) in expected {
            assert_eq!(entry(&entries, name).atc_code.as_str(), code, "{name}");
        }
    }

    #[test]
    fn several_strengths_and_forms_of_one_substance_are_offered() {
        let entries = shipped();
        let amoxicillin: BTreeSet<(&str, &str)> = entries
            .iter()
            .filter(|entry| entry.generic_name == "amoxicillin")
            .map(|entry| (entry.form.as_str(), entry.strength.as_str()))
            .collect();
        for product in [("capsule", "250 mg"), ("capsule", "500 mg"), ("oral suspension", "125 mg/5 mL")] {
            assert!(amoxicillin.contains(&product), "amoxicillin {product:?} in {amoxicillin:?}");
        }
    }

    #[test]
    fn alternatives_exist_within_atc_groups() {
        let mut substances_by_group: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let entries = shipped();
        for entry in &entries {
            substances_by_group.entry(entry.atc_code.group()).or_default().insert(entry.generic_name.as_str());
        }
        for (group, members) in [
            ("J01CA", ["amoxicillin", "ampicillin"].as_slice()),
            ("C09AA", &["enalapril", "lisinopril", "captopril"]),
            ("M01AE", &["ibuprofen", "naproxen"]),
            ("A02BC", &["omeprazole", "esomeprazole", "pantoprazole"]),
            ("C10AA", &["simvastatin", "atorvastatin", "rosuvastatin"]),
        ] {
            for member in members {
                assert!(substances_by_group[group].contains(member), "{member} in {group}");
            }
        }
        let groups_with_alternatives = substances_by_group.values().filter(|substances| substances.len() >= 2).count();
        assert!(groups_with_alternatives >= 5, "only {groups_with_alternatives} groups with several substances");
    }

    #[test]
    fn generic_names_are_lower_case_inns_and_prices_round_trip() {
        // Capitals survive only where the name has them: "amphotericin B", "anti-D immunoglobulin".
        let keeps_capital = |word: &str| word.len() == 1 || word == "anti-D";
        for entry in shipped() {
            for word in entry.generic_name.split(' ') {
                assert!(keeps_capital(word) || !word.chars().any(char::is_uppercase), "{}: {word}", entry.name);
            }
            assert_eq!(UnitPrice::parse(&entry.unit_price.to_string()), Some(entry.unit_price), "{}", entry.name);
        }
        let entries = shipped();
        assert_eq!(entry(&entries, "Amoxicillin 500 mg capsule").unit_price.cents(), 500);
    }

    #[test]
    fn prices_are_exact_decimals_with_at_most_two_places() {
        assert_eq!(UnitPrice::parse("12").map(UnitPrice::cents), Some(1200));
        assert_eq!(UnitPrice::parse("12.5").map(UnitPrice::cents), Some(1250));
        assert_eq!(UnitPrice::parse("0.05").map(UnitPrice::cents), Some(5));
        assert_eq!(UnitPrice::parse("9999999999.99").map(UnitPrice::cents), Some(999_999_999_999));
        assert_eq!(UnitPrice::parse("12.5").map(|price| price.to_string()).as_deref(), Some("12.50"));
        for refused in ["", ".5", "12.", "12.345", "-1.00", "+1", "1e3", "1,000.00", "12.5a", "10000000000.00", " 1"] {
            assert_eq!(UnitPrice::parse(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn atc_codes_must_be_level_5() {
        assert_eq!(AtcCode::parse("J01CA04").map(|code| code.group().to_owned()).as_deref(), Some("J01CA"));
        for refused in ["A07CA", "j01ca04", "J1CA04", "J01CA4", "J01CA045", "J01C404", "J01CA0A", "ΑΒ01CA04"] {
            assert_eq!(AtcCode::parse(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn a_good_csv_parses_into_entries() {
        let entries = parse(&format!("{HEADER}\n{GOOD_ROW}\r\n\n")).expect("parses");
        assert_eq!(entries.len(), 1);
        let amoxicillin = &entries[0];
        assert_eq!(amoxicillin.generic_name, "amoxicillin");
        assert_eq!(amoxicillin.atc_code.as_str(), "J01CA04");
        assert_eq!(amoxicillin.unit_price.to_string(), "5.00");
    }

    #[test]
    fn bad_rows_are_reported_with_their_line_numbers() {
        let cases = [
            ("Amoxicillin 500 mg capsule,amoxicillin,J01CA04,capsule,500 mg,capsule,Generic", "has 7 fields"),
            ("Amoxicillin 500 mg capsule,amoxicillin,J01CA04,capsule,500 mg,capsule,Generic,5.00,extra", "has 9 fields"),
            ("Amoxicillin 250 mg capsule,,J01CA04,capsule,250 mg,capsule,Generic,3.00", "generic_name is empty"),
            ("Oral rehydration salts sachet,oral rehydration salts,A07CA,sachet,20.5 g,sachet,Generic,10.00", "atc_code \"A07CA\""),
            ("Amoxicillin 250 mg capsule,amoxicillin,J01CA04,capsule,250 mg,capsule,Generic,3.005", "unit_price \"3.005\""),
            ("Amoxicillin 250 mg capsule,amoxicillin,J01CA04,capsule,250 mg,capsule,Generic,-3.00", "unit_price \"-3.00\""),
            ("Amoxicillin 250 mg capsule,amoxicillin,J01CA04,lozenge,250 mg,capsule,Generic,3.00", "form \"lozenge\""),
            ("\"Amoxicillin 250 mg capsule\",amoxicillin,J01CA04,capsule,250 mg,capsule,Generic,3.00", "contains a quote"),
            (GOOD_ROW, "already on line 2"),
        ];
        for (bad_row, problem) in cases {
            let error = refusal(&[GOOD_ROW, bad_row]);
            assert_eq!(error.line(), 3, "{error}");
            assert!(matches!(error, FormularyError::Row { line: 3, .. }), "{error}");
            assert!(error.to_string().starts_with("line 3: "), "{error}");
            assert!(error.to_string().contains(problem), "{error} should mention {problem}");
        }
    }

    #[test]
    fn blank_lines_still_count_towards_line_numbers() {
        let error = refusal(&[GOOD_ROW, "", "Broken row,with,too,few,fields"]);
        assert_eq!(error.line(), 4, "{error}");
    }

    #[test]
    fn a_wrong_header_is_refused_on_line_1() {
        let error = parse(&format!("name,generic,atc,form,strength,unit,manufacturer,price\n{GOOD_ROW}")).expect_err("refused");
        assert!(matches!(error, FormularyError::Header { .. }), "{error}");
        assert_eq!(error.line(), 1);
        assert!(matches!(parse(""), Err(FormularyError::Header { .. })));
    }
}
