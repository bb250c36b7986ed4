//! NEWS2, the National Early Warning Score (Royal College of Physicians, 2017): the vital signs a
//! unit's monitor reports for a patient, and the score and clinical risk band computed from them.
//!
//! This is the pure core of the device gateway's vitals path: a set of observations arrives (MQTT
//! or HTTP), is parsed into [`Vitals`] at the edge, and [`score`] turns it into a [`News2`] that an
//! incident event carries and that decides whether a pre-arrival alert goes out.
//!
//! Each vital is a type that cannot hold sensor garbage: NaN, infinities, negative readings and
//! values outside what a living patient and a real monitor can produce are refused with an error
//! naming the field. The limits are deliberately wide: a reading that is extreme but possible (an
//! SpO2 of 60 %, a temperature of 28 °C) must be scored, not refused, because it is exactly the
//! patient the score exists for.
//!
//! Fractional readings: the chart is written in whole numbers, except temperature in tenths of a
//! degree. A reading is rounded to that precision, half away from zero, before it is placed in a
//! band, so SpO2 93.5 % is charted as 94 and 38.05 °C as 38.1. The reading itself is kept as sent.
//!
//! SpO2 scale 2 is for patients with hypercapnic respiratory failure whose prescribed target is
//! 88–92 %; the RCP asks that a clinician decide and record its use, so the scale is a property of
//! the patient, passed to [`score`], never something a monitor reports.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ActorError;

/// How far ahead of the hub's clock a measurement time may be (monitor clocks drift).
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(5);
/// How old a set of observations may be and still be reported as the patient's current state.
pub const MAX_OBSERVATION_AGE: Duration = Duration::hours(24);

fn invalid(field: &'static str, detail: impl Into<String>) -> ActorError {
    ActorError::Invalid { field, detail: detail.into() }
}

/// Rounds a reading to `decimals` places, half away from zero, as the decimal it was written as.
fn charted(value: f64, decimals: i32) -> i64 {
    // A decimal such as 38.05 has no exact binary form (it is stored as 38.04999…); snapping to a
    // millionth first makes a half-way reading round as the decimal the monitor or nurse wrote,
    // not as its approximation happens to multiply out.
    let millionths = (value * 1e6).round();
    (millionths / 10f64.powi(6 - decimals)).round() as i64
}

/// The plausible range of one measured quantity: beyond it a reading is a sensor fault, a unit
/// mix-up or a typing slip, not a patient.
struct Limits {
    field: &'static str,
    unit: &'static str,
    min: f64,
    max: f64,
}

impl Limits {
    fn check(&self, value: f64) -> Result<f64, ActorError> {
        let Limits { field, unit, min, max } = *self;
        if value.is_nan() {
            return Err(invalid(field, format!("{field} is not a number (NaN); check the sensor")));
        }
        if value.is_infinite() {
            return Err(invalid(field, format!("{field} is infinite; check the sensor")));
        }
        if value < 0.0 {
            return Err(invalid(field, format!("{field} {value} {unit} cannot be negative")));
        }
        if value < min || value > max {
            return Err(invalid(field, format!("{field} {value} {unit} is outside the plausible range {min}–{max} {unit}; check the sensor")));
        }
        Ok(value)
    }
}

// Apnoea (0) is a real finding, counted by hand.
const RESPIRATION_RATE: Limits = Limits { field: "respiration_rate", unit: "breaths/min", min: 0.0, max: 100.0 };
// Oximeters send 0 when the probe is off; anything above 100 % is a fault code (127, 255).
const SPO2: Limits = Limits { field: "spo2", unit: "%", min: 1.0, max: 100.0 };
const SYSTOLIC_BP: Limits = Limits { field: "systolic_bp", unit: "mmHg", min: 20.0, max: 300.0 };
const PULSE: Limits = Limits { field: "pulse", unit: "beats/min", min: 10.0, max: 300.0 };
// Accidental hypothermia is survived well below 25 °C; 45 °C is beyond any recorded survival.
const TEMPERATURE: Limits = Limits { field: "temperature", unit: "°C", min: 15.0, max: 45.0 };

// ---------------------------------------------------------------------------------------------
// Domain values

/// Respiration rate in breaths per minute.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64")]
pub struct RespirationRate(f64);

impl RespirationRate {
    pub fn new(per_minute: f64) -> Result<RespirationRate, ActorError> {
        RESPIRATION_RATE.check(per_minute).map(RespirationRate)
    }

    pub fn per_minute(self) -> f64 {
        self.0
    }

    fn points(self) -> u8 {
        match charted(self.0, 0) {
            ..=8 => 3,
            9..=11 => 1,
            12..=20 => 0,
            21..=24 => 2,
            _ => 3,
        }
    }
}

/// Peripheral oxygen saturation in per cent.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64")]
pub struct SpO2(f64);

impl SpO2 {
    pub fn new(percent: f64) -> Result<SpO2, ActorError> {
        SPO2.check(percent).map(SpO2)
    }

    pub fn percent(self) -> f64 {
        self.0
    }

    fn points(self, scale: SpO2Scale, on_oxygen: OnOxygen) -> u8 {
        let percent = charted(self.0, 0);
        match scale {
            SpO2Scale::Scale1 => match percent {
                ..=91 => 3,
                92..=93 => 2,
                94..=95 => 1,
                _ => 0,
            },
            // On scale 2 a high saturation is only a concern when oxygen is driving it.
            SpO2Scale::Scale2 => match (percent, on_oxygen.0) {
                (..=83, _) => 3,
                (84..=85, _) => 2,
                (86..=87, _) => 1,
                (88..=92, _) | (_, false) => 0,
                (93..=94, true) => 1,
                (95..=96, true) => 2,
                (_, true) => 3,
            },
        }
    }
}

/// Systolic blood pressure in mmHg.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64")]
pub struct SystolicBp(f64);

impl SystolicBp {
    pub fn new(mmhg: f64) -> Result<SystolicBp, ActorError> {
        SYSTOLIC_BP.check(mmhg).map(SystolicBp)
    }

    pub fn mmhg(self) -> f64 {
        self.0
    }

    fn points(self) -> u8 {
        match charted(self.0, 0) {
            ..=90 => 3,
            91..=100 => 2,
            101..=110 => 1,
            111..=219 => 0,
            _ => 3,
        }
    }
}

/// Pulse (heart rate) in beats per minute.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64")]
pub struct Pulse(f64);

impl Pulse {
    pub fn new(per_minute: f64) -> Result<Pulse, ActorError> {
        PULSE.check(per_minute).map(Pulse)
    }

    pub fn per_minute(self) -> f64 {
        self.0
    }

    fn points(self) -> u8 {
        match charted(self.0, 0) {
            ..=40 => 3,
            41..=50 => 1,
            51..=90 => 0,
            91..=110 => 1,
            111..=130 => 2,
            _ => 3,
        }
    }
}

/// Body temperature in degrees Celsius; the chart's bands are in tenths of a degree.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64")]
pub struct Temperature(f64);

impl Temperature {
    pub fn new(celsius: f64) -> Result<Temperature, ActorError> {
        TEMPERATURE.check(celsius).map(Temperature).map_err(|error| {
            // 95–113 °F is the usual Fahrenheit range of a patient; say so rather than "implausible".
            if (95.0..=113.0).contains(&celsius) {
                let as_celsius = (celsius - 32.0) * 5.0 / 9.0;
                invalid("temperature", format!("{error}; temperature is in °C ({celsius} °F would be {as_celsius:.1} °C)"))
            } else {
                error
            }
        })
    }

    pub fn celsius(self) -> f64 {
        self.0
    }

    fn points(self) -> u8 {
        match charted(self.0, 1) {
            ..=350 => 3,
            351..=360 => 1,
            361..=380 => 0,
            381..=390 => 1,
            _ => 2,
        }
    }
}

/// Level of consciousness on the ACVPU scale. Any departure from alert, including confusion
/// that is new, scores 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consciousness {
    Alert,
    /// New confusion, disorientation or agitation.
    Confusion,
    /// Responds to voice.
    Voice,
    /// Responds to pain.
    Pain,
    Unresponsive,
}

impl Consciousness {
    const ALL: [Consciousness; 5] =
        [Consciousness::Alert, Consciousness::Confusion, Consciousness::Voice, Consciousness::Pain, Consciousness::Unresponsive];

    pub fn as_str(self) -> &'static str {
        match self {
            Consciousness::Alert => "alert",
            Consciousness::Confusion => "confusion",
            Consciousness::Voice => "voice",
            Consciousness::Pain => "pain",
            Consciousness::Unresponsive => "unresponsive",
        }
    }

    pub fn parse(value: &str) -> Result<Consciousness, ActorError> {
        Consciousness::ALL.into_iter().find(|level| level.as_str() == value).ok_or_else(|| {
            invalid("consciousness", format!("consciousness {value:?} is not one of \"alert\", \"confusion\", \"voice\", \"pain\", \"unresponsive\" (ACVPU)"))
        })
    }

    fn points(self) -> u8 {
        if self == Consciousness::Alert {
            0
        } else {
            3
        }
    }
}

impl fmt::Display for Consciousness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the patient is breathing supplemental oxygen (by any device) rather than room air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OnOxygen(pub bool);

impl OnOxygen {
    fn points(self) -> u8 {
        if self.0 {
            2
        } else {
            0
        }
    }
}

/// Which SpO2 chart applies: scale 1 for everyone, unless a clinician has prescribed a target of
/// 88–92 % for hypercapnic respiratory failure (scale 2). On the wire it is the number 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum SpO2Scale {
    #[default]
    Scale1,
    Scale2,
}

impl TryFrom<u8> for SpO2Scale {
    type Error = ActorError;
    fn try_from(number: u8) -> Result<Self, Self::Error> {
        match number {
            1 => Ok(SpO2Scale::Scale1),
            2 => Ok(SpO2Scale::Scale2),
            _ => Err(invalid("spo2_scale", format!("spo2_scale {number} must be 1 or 2 (2 only for a prescribed 88–92 % target)"))),
        }
    }
}

impl From<SpO2Scale> for u8 {
    fn from(scale: SpO2Scale) -> u8 {
        match scale {
            SpO2Scale::Scale1 => 1,
            SpO2Scale::Scale2 => 2,
        }
    }
}

macro_rules! try_from_f64 {
    ($($reading:ident),*) => {$(
        impl TryFrom<f64> for $reading {
            type Error = ActorError;
            fn try_from(value: f64) -> Result<Self, Self::Error> {
                $reading::new(value)
            }
        }
    )*};
}

try_from_f64!(RespirationRate, SpO2, SystolicBp, Pulse, Temperature);

/// Checks a measurement time against the hub's clock: at most [`MAX_CLOCK_SKEW`] ahead and at
/// most [`MAX_OBSERVATION_AGE`] old.
pub fn check_measured_at(at: DateTime<Utc>, now: DateTime<Utc>) -> Result<DateTime<Utc>, ActorError> {
    if at > now + MAX_CLOCK_SKEW {
        return Err(invalid(
            "measured_at",
            format!(
                "measured_at {} is {} s ahead of the hub's clock ({}); at most 5 minutes is accepted, check the monitor's clock",
                at.to_rfc3339(),
                (at - now).num_seconds(),
                now.to_rfc3339()
            ),
        ));
    }
    if at < now - MAX_OBSERVATION_AGE {
        return Err(invalid(
            "measured_at",
            format!("measured_at {} is more than 24 hours old ({}); send current observations", at.to_rfc3339(), now.to_rfc3339()),
        ));
    }
    Ok(at)
}

/// One full set of observations, as NEWS2 needs it: all seven parameters and when they were
/// measured.
///
/// On the wire: `{"respiration_rate", "spo2", "on_oxygen", "systolic_bp", "pulse",
/// "consciousness", "temperature", "measured_at"}` with numbers in the units of each type, a
/// boolean, an ACVPU name and an RFC 3339 time. Deserialising checks every value and names the
/// first field that is missing, unknown or out of range; it does not check `measured_at` against
/// the clock (stored events are old by design), which [`Vitals::parse_json`] and
/// [`check_measured_at`] do.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value")]
pub struct Vitals {
    pub respiration_rate: RespirationRate,
    pub spo2: SpO2,
    pub on_oxygen: OnOxygen,
    pub systolic_bp: SystolicBp,
    pub pulse: Pulse,
    pub consciousness: Consciousness,
    pub temperature: Temperature,
    pub measured_at: DateTime<Utc>,
}

const VITALS_FIELDS: [&str; 8] =
    ["respiration_rate", "spo2", "on_oxygen", "systolic_bp", "pulse", "consciousness", "temperature", "measured_at"];

impl Vitals {
    /// Parses a vitals payload at the edge: every value in range and the measurement time
    /// plausible against `now`.
    pub fn parse_json(text: &str, now: DateTime<Utc>) -> Result<Vitals, ActorError> {
        let json: Value = serde_json::from_str(text).map_err(|error| invalid("vitals", format!("vitals are not valid JSON: {error}")))?;
        let vitals = Vitals::from_json(&json)?;
        check_measured_at(vitals.measured_at, now)?;
        Ok(vitals)
    }

    /// Reads a vitals object, checking each value's type and range (not the measurement time
    /// against the clock).
    pub fn from_json(json: &Value) -> Result<Vitals, ActorError> {
        let object = json.as_object().ok_or_else(|| invalid("vitals", "vitals must be a JSON object"))?;
        if let Some(unknown) = object.keys().find(|key| !VITALS_FIELDS.contains(&key.as_str())) {
            return Err(invalid("vitals", format!("unknown vitals field {unknown:?}; the fields are {}", VITALS_FIELDS.join(", "))));
        }
        let present = |field: &'static str| match object.get(field) {
            None | Some(Value::Null) => Err(invalid(field, format!("{field} is missing; NEWS2 needs all seven parameters"))),
            Some(value) => Ok(value),
        };
        let number = |field: &'static str, unit: &str| {
            present(field).and_then(|value| value.as_f64().ok_or_else(|| invalid(field, format!("{field} must be a number in {unit}, not {value}"))))
        };
        let on_oxygen = present("on_oxygen")?;
        let on_oxygen = on_oxygen.as_bool().ok_or_else(|| invalid("on_oxygen", format!("on_oxygen must be true or false, not {on_oxygen}")))?;
        let consciousness = present("consciousness")?;
        let consciousness = consciousness
            .as_str()
            .ok_or_else(|| invalid("consciousness", format!("consciousness must be an ACVPU name such as \"alert\", not {consciousness}")))?;
        let measured_at = present("measured_at")?;
        let measured_at = measured_at
            .as_str()
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .ok_or_else(|| invalid("measured_at", format!("measured_at must be an RFC 3339 time such as \"2026-05-01T10:15:00Z\", not {measured_at}")))?;
        Ok(Vitals {
            respiration_rate: RespirationRate::new(number("respiration_rate", RESPIRATION_RATE.unit)?)?,
            spo2: SpO2::new(number("spo2", SPO2.unit)?)?,
            on_oxygen: OnOxygen(on_oxygen),
            systolic_bp: SystolicBp::new(number("systolic_bp", SYSTOLIC_BP.unit)?)?,
            pulse: Pulse::new(number("pulse", PULSE.unit)?)?,
            consciousness: Consciousness::parse(consciousness)?,
            temperature: Temperature::new(number("temperature", TEMPERATURE.unit)?)?,
            measured_at: measured_at.with_timezone(&Utc),
        })
    }
}

impl TryFrom<Value> for Vitals {
    type Error = ActorError;
    fn try_from(json: Value) -> Result<Self, Self::Error> {
        Vitals::from_json(&json)
    }
}

// ---------------------------------------------------------------------------------------------
// The score

/// The clinical risk band, in increasing order of urgency (so `band >= RiskBand::Medium` reads
/// as it should).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskBand {
    /// Aggregate 0–4 with no parameter scoring 3: ward-based response.
    Low,
    /// Aggregate 0–4 but a 3 in a single parameter: urgent ward-based response.
    LowMedium,
    /// Aggregate 5–6: key threshold for an urgent response.
    Medium,
    /// Aggregate 7 or more: emergency response.
    High,
}

/// Each parameter's sub-score (0 to 3), keyed as in [`Vitals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParameterScores {
    pub respiration_rate: u8,
    pub spo2: u8,
    pub on_oxygen: u8,
    pub systolic_bp: u8,
    pub pulse: u8,
    pub consciousness: u8,
    pub temperature: u8,
}

impl ParameterScores {
    fn all(&self) -> [u8; 7] {
        [self.respiration_rate, self.spo2, self.on_oxygen, self.systolic_bp, self.pulse, self.consciousness, self.temperature]
    }
}

/// A NEWS2 result. Only [`score`] makes one, so its aggregate and band always agree with its
/// sub-scores. Serialised for events as `{"score", "band", "spo2_scale", "parameters": {...}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct News2 {
    score: u8,
    band: RiskBand,
    spo2_scale: SpO2Scale,
    parameters: ParameterScores,
}

impl News2 {
    /// The aggregate score, 0 to 20.
    pub fn score(&self) -> u8 {
        self.score
    }

    pub fn band(&self) -> RiskBand {
        self.band
    }

    /// The SpO2 scale the score was computed on (the chart asks that it be recorded).
    pub fn spo2_scale(&self) -> SpO2Scale {
        self.spo2_scale
    }

    pub fn parameters(&self) -> &ParameterScores {
        &self.parameters
    }
}

/// Scores a full set of observations on the RCP NEWS2 chart with the patient's SpO2 scale.
pub fn score(vitals: &Vitals, scale: SpO2Scale) -> News2 {
    let parameters = ParameterScores {
        respiration_rate: vitals.respiration_rate.points(),
        spo2: vitals.spo2.points(scale, vitals.on_oxygen),
        on_oxygen: vitals.on_oxygen.points(),
        systolic_bp: vitals.systolic_bp.points(),
        pulse: vitals.pulse.points(),
        consciousness: vitals.consciousness.points(),
        temperature: vitals.temperature.points(),
    };
    let points = parameters.all();
    let score: u8 = points.iter().sum();
    let band = match score {
        7.. => RiskBand::High,
        5..=6 => RiskBand::Medium,
        _ if points.contains(&3) => RiskBand::LowMedium,
        _ => RiskBand::Low,
    };
    News2 { score, band, spo2_scale: scale, parameters }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use Consciousness::{Alert, Confusion, Pain, Unresponsive, Voice};
    use RiskBand::{High, Low, LowMedium, Medium};
    use SpO2Scale::{Scale1, Scale2};

    const AIR: bool = false;
    const O2: bool = true;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-05-01T10:15:00Z").unwrap().with_timezone(&Utc)
    }

    fn vitals(rr: f64, spo2: f64, oxygen: bool, sbp: f64, pulse: f64, consciousness: Consciousness, temp: f64) -> Vitals {
        Vitals {
            respiration_rate: RespirationRate::new(rr).unwrap(),
            spo2: SpO2::new(spo2).unwrap(),
            on_oxygen: OnOxygen(oxygen),
            systolic_bp: SystolicBp::new(sbp).unwrap(),
            pulse: Pulse::new(pulse).unwrap(),
            consciousness,
            temperature: Temperature::new(temp).unwrap(),
            measured_at: now(),
        }
    }

    fn normal() -> Vitals {
        vitals(16.0, 98.0, AIR, 120.0, 70.0, Alert, 37.0)
    }

    fn field_of<T: fmt::Debug>(result: Result<T, ActorError>) -> &'static str {
        match result {
            Err(ActorError::Invalid { field, detail }) => {
                assert!(detail.contains(field), "the detail {detail:?} should name {field}");
                field
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Scale, respiration rate, SpO2, air or oxygen, systolic BP, pulse, consciousness,
    /// temperature (the chart's order); then the expected sub-scores in that order, the aggregate
    /// and the band.
    type ReferenceCase = (SpO2Scale, f64, f64, bool, f64, f64, Consciousness, f64, [u8; 7], u8, RiskBand);

    /// Full observation sets scored against the RCP NEWS2 chart (2017).
    #[rustfmt::skip]
    const REFERENCE: &[ReferenceCase] = &[
        // Everything in the white (0) bands, at the middle and at both edges.
        (Scale1, 16.0, 98.0, AIR, 120.0, 70.0, Alert, 37.0, [0, 0, 0, 0, 0, 0, 0], 0, Low),
        (Scale1, 20.0, 96.0, AIR, 219.0, 90.0, Alert, 38.0, [0, 0, 0, 0, 0, 0, 0], 0, Low),
        (Scale1, 12.0, 96.0, AIR, 111.0, 51.0, Alert, 36.1, [0, 0, 0, 0, 0, 0, 0], 0, Low),
        // The 1-point bands below normal.
        (Scale1,  9.0, 95.0, AIR, 110.0, 50.0, Alert, 36.0, [1, 1, 0, 1, 1, 0, 1], 5, Medium),
        (Scale1, 11.0, 94.0, AIR, 101.0, 70.0, Alert, 35.1, [1, 1, 0, 1, 0, 0, 1], 4, Low),
        (Scale1, 16.0, 98.0, AIR, 120.0, 41.0, Alert, 37.0, [0, 0, 0, 0, 1, 0, 0], 1, Low),
        // The bands above normal.
        (Scale1, 21.0, 93.0, AIR, 120.0, 91.0, Alert, 38.1, [2, 2, 0, 0, 1, 0, 1], 6, Medium),
        (Scale1, 24.0, 92.0,  O2, 100.0, 110.0, Alert, 39.0, [2, 2, 2, 2, 1, 0, 1], 10, High),
        (Scale1, 16.0, 96.0, AIR, 120.0, 111.0, Alert, 37.0, [0, 0, 0, 0, 2, 0, 0], 2, Low),
        (Scale1, 16.0, 96.0, AIR, 120.0, 130.0, Alert, 35.0, [0, 0, 0, 0, 2, 0, 3], 5, Medium),
        (Scale1, 22.0, 96.0, AIR, 120.0, 131.0, Alert, 39.1, [2, 0, 0, 0, 3, 0, 2], 7, High),
        (Scale1, 22.0, 97.0, AIR, 120.0, 100.0, Alert, 40.5, [2, 0, 0, 0, 1, 0, 2], 5, Medium),
        (Scale1, 16.0, 97.0, AIR, 91.0, 70.0, Alert, 37.0, [0, 0, 0, 2, 0, 0, 0], 2, Low),
        // A 3 in one parameter alone: low-medium.
        (Scale1, 25.0, 98.0, AIR, 120.0, 70.0, Alert, 37.0, [3, 0, 0, 0, 0, 0, 0], 3, LowMedium),
        (Scale1,  8.0, 97.0, AIR, 130.0, 80.0, Alert, 37.0, [3, 0, 0, 0, 0, 0, 0], 3, LowMedium),
        (Scale1, 16.0, 91.0, AIR, 120.0, 70.0, Alert, 37.0, [0, 3, 0, 0, 0, 0, 0], 3, LowMedium),
        (Scale1, 16.0, 97.0, AIR, 90.0, 70.0, Alert, 37.0, [0, 0, 0, 3, 0, 0, 0], 3, LowMedium),
        (Scale1, 16.0, 97.0, AIR, 220.0, 70.0, Alert, 37.0, [0, 0, 0, 3, 0, 0, 0], 3, LowMedium),
        (Scale1, 16.0, 97.0, AIR, 120.0, 40.0, Alert, 37.0, [0, 0, 0, 0, 3, 0, 0], 3, LowMedium),
        (Scale1, 16.0, 97.0, AIR, 120.0, 70.0, Alert, 35.0, [0, 0, 0, 0, 0, 0, 3], 3, LowMedium),
        (Scale1, 16.0, 97.0, AIR, 120.0, 70.0, Confusion, 37.0, [0, 0, 0, 0, 0, 3, 0], 3, LowMedium),
        (Scale1, 18.0, 97.0, AIR, 140.0, 88.0, Alert, 37.2, [0, 0, 0, 0, 0, 0, 0], 0, Low),
        // Every non-alert level scores 3.
        (Scale1, 24.0, 97.0, AIR, 120.0, 70.0, Voice, 37.0, [2, 0, 0, 0, 0, 3, 0], 5, Medium),
        (Scale1, 16.0, 97.0, AIR, 95.0, 120.0, Pain, 37.0, [0, 0, 0, 2, 2, 3, 0], 7, High),
        (Scale1,  6.0, 85.0,  O2, 70.0, 35.0, Unresponsive, 34.0, [3, 3, 2, 3, 3, 3, 3], 20, High),
        // Oxygen scores 2 on its own; scale 1 ignores it for the saturation.
        (Scale1, 16.0, 98.0,  O2, 120.0, 70.0, Alert, 37.0, [0, 0, 2, 0, 0, 0, 0], 2, Low),
        (Scale1, 16.0, 88.0,  O2, 120.0, 70.0, Alert, 37.0, [0, 3, 2, 0, 0, 0, 0], 5, Medium),
        (Scale1, 16.0, 97.0,  O2, 120.0, 70.0, Alert, 37.0, [0, 0, 2, 0, 0, 0, 0], 2, Low),
        // Scale 2, every band.
        (Scale2, 16.0, 83.0, AIR, 120.0, 70.0, Alert, 37.0, [0, 3, 0, 0, 0, 0, 0], 3, LowMedium),
        (Scale2, 16.0, 84.0,  O2, 120.0, 70.0, Alert, 37.0, [0, 2, 2, 0, 0, 0, 0], 4, Low),
        (Scale2, 21.0, 85.0, AIR, 120.0, 91.0, Alert, 37.0, [2, 2, 0, 0, 1, 0, 0], 5, Medium),
        (Scale2, 16.0, 86.0,  O2, 120.0, 70.0, Alert, 37.0, [0, 1, 2, 0, 0, 0, 0], 3, Low),
        (Scale2, 16.0, 87.0, AIR, 120.0, 70.0, Alert, 37.0, [0, 1, 0, 0, 0, 0, 0], 1, Low),
        (Scale2, 16.0, 88.0,  O2, 120.0, 70.0, Alert, 37.0, [0, 0, 2, 0, 0, 0, 0], 2, Low),
        (Scale2, 16.0, 92.0, AIR, 120.0, 70.0, Alert, 37.0, [0, 0, 0, 0, 0, 0, 0], 0, Low),
        (Scale2, 16.0, 93.0, AIR, 120.0, 70.0, Alert, 37.0, [0, 0, 0, 0, 0, 0, 0], 0, Low),
        (Scale2, 16.0, 99.0, AIR, 120.0, 70.0, Alert, 37.0, [0, 0, 0, 0, 0, 0, 0], 0, Low),
        (Scale2, 16.0, 93.0,  O2, 120.0, 70.0, Alert, 37.0, [0, 1, 2, 0, 0, 0, 0], 3, Low),
        (Scale2, 16.0, 94.0,  O2, 120.0, 70.0, Alert, 37.0, [0, 1, 2, 0, 0, 0, 0], 3, Low),
        (Scale2, 16.0, 95.0,  O2, 120.0, 70.0, Alert, 37.0, [0, 2, 2, 0, 0, 0, 0], 4, Low),
        (Scale2, 21.0, 96.0,  O2, 120.0, 70.0, Alert, 37.0, [2, 2, 2, 0, 0, 0, 0], 6, Medium),
        (Scale2, 16.0, 97.0,  O2, 120.0, 70.0, Alert, 37.0, [0, 3, 2, 0, 0, 0, 0], 5, Medium),
        (Scale2, 16.0, 100.0, O2, 120.0, 112.0, Alert, 38.5, [0, 3, 2, 0, 2, 0, 1], 8, High),
    ];

    #[test]
    fn reference_observations_score_as_on_the_rcp_chart() {
        assert!(REFERENCE.len() >= 24);
        for (row, &(scale, rr, spo2, oxygen, sbp, pulse, consciousness, temp, points, aggregate, band)) in REFERENCE.iter().enumerate() {
            let news2 = score(&vitals(rr, spo2, oxygen, sbp, pulse, consciousness, temp), scale);
            let case = format!("row {row}: {scale:?} rr {rr} spo2 {spo2} oxygen {oxygen} sbp {sbp} pulse {pulse} {consciousness} temp {temp}");
            assert_eq!(news2.parameters().all(), points, "{case}");
            assert_eq!(news2.score(), aggregate, "{case}");
            assert_eq!(news2.band(), band, "{case}");
        }
    }

    /// Both edges of every band of every parameter, one parameter at a time.
    #[test]
    fn every_band_edge_of_every_parameter() {
        let sub = |change: &dyn Fn(&mut Vitals), scale: SpO2Scale| {
            let mut v = normal();
            change(&mut v);
            score(&v, scale).parameters
        };
        for (rr, points) in [(0.0, 3), (8.0, 3), (9.0, 1), (11.0, 1), (12.0, 0), (20.0, 0), (21.0, 2), (24.0, 2), (25.0, 3), (60.0, 3)] {
            assert_eq!(sub(&|v| v.respiration_rate = RespirationRate::new(rr).unwrap(), Scale1).respiration_rate, points, "rr {rr}");
        }
        for (spo2, points) in [(70.0, 3), (91.0, 3), (92.0, 2), (93.0, 2), (94.0, 1), (95.0, 1), (96.0, 0), (100.0, 0)] {
            for oxygen in [AIR, O2] {
                let got = sub(&|v| { v.spo2 = SpO2::new(spo2).unwrap(); v.on_oxygen = OnOxygen(oxygen) }, Scale1);
                assert_eq!(got.spo2, points, "scale 1 spo2 {spo2} oxygen {oxygen}");
            }
        }
        #[rustfmt::skip]
        let scale2 = [
            (70.0, 3, 3), (83.0, 3, 3), (84.0, 2, 2), (85.0, 2, 2), (86.0, 1, 1), (87.0, 1, 1), (88.0, 0, 0), (92.0, 0, 0),
            (93.0, 0, 1), (94.0, 0, 1), (95.0, 0, 2), (96.0, 0, 2), (97.0, 0, 3), (100.0, 0, 3),
        ];
        for (spo2, on_air, on_oxygen) in scale2 {
            let air = sub(&|v| v.spo2 = SpO2::new(spo2).unwrap(), Scale2);
            let oxygen = sub(&|v| { v.spo2 = SpO2::new(spo2).unwrap(); v.on_oxygen = OnOxygen(O2) }, Scale2);
            assert_eq!((air.spo2, oxygen.spo2), (on_air, on_oxygen), "scale 2 spo2 {spo2}");
            assert_eq!((air.on_oxygen, oxygen.on_oxygen), (0, 2));
        }
        for (sbp, points) in [(50.0, 3), (90.0, 3), (91.0, 2), (100.0, 2), (101.0, 1), (110.0, 1), (111.0, 0), (219.0, 0), (220.0, 3), (260.0, 3)] {
            assert_eq!(sub(&|v| v.systolic_bp = SystolicBp::new(sbp).unwrap(), Scale1).systolic_bp, points, "sbp {sbp}");
        }
        #[rustfmt::skip]
        let pulses = [(30.0, 3), (40.0, 3), (41.0, 1), (50.0, 1), (51.0, 0), (90.0, 0), (91.0, 1), (110.0, 1), (111.0, 2), (130.0, 2), (131.0, 3), (180.0, 3)];
        for (pulse, points) in pulses {
            assert_eq!(sub(&|v| v.pulse = Pulse::new(pulse).unwrap(), Scale1).pulse, points, "pulse {pulse}");
        }
        for (level, points) in [(Alert, 0), (Confusion, 3), (Voice, 3), (Pain, 3), (Unresponsive, 3)] {
            assert_eq!(sub(&|v| v.consciousness = level, Scale1).consciousness, points, "{level}");
        }
        #[rustfmt::skip]
        let temperatures = [(30.0, 3), (35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1), (39.0, 1), (39.1, 2), (42.0, 2)];
        for (temp, points) in temperatures {
            assert_eq!(sub(&|v| v.temperature = Temperature::new(temp).unwrap(), Scale1).temperature, points, "temp {temp}");
        }
    }

    #[test]
    fn a_three_in_one_parameter_raises_a_low_score_to_low_medium_but_not_a_medium_one() {
        let mut v = normal();
        v.consciousness = Confusion;
        assert_eq!((score(&v, Scale1).score(), score(&v, Scale1).band()), (3, LowMedium));
        // Four 1-point parameters make the same aggregate without a 3: low.
        let spread = vitals(11.0, 95.0, AIR, 105.0, 100.0, Alert, 37.0);
        assert_eq!((score(&spread, Scale1).score(), score(&spread, Scale1).band()), (4, Low));
        // 3 + 1 = 4 is still low-medium; 3 + 2 = 5 is medium, the higher band wins.
        v.pulse = Pulse::new(95.0).unwrap();
        assert_eq!((score(&v, Scale1).score(), score(&v, Scale1).band()), (4, LowMedium));
        v.pulse = Pulse::new(115.0).unwrap();
        assert_eq!((score(&v, Scale1).score(), score(&v, Scale1).band()), (5, Medium));
        assert!(RiskBand::High > RiskBand::Medium && RiskBand::Medium > RiskBand::LowMedium && RiskBand::LowMedium > RiskBand::Low);
    }

    #[test]
    fn fractional_readings_are_rounded_half_away_from_zero_to_the_charts_precision() {
        let temperature = |celsius: f64| Temperature::new(celsius).unwrap().points();
        assert_eq!(temperature(38.05), 1, "38.05 charts as 38.1");
        assert_eq!(temperature(38.04), 0, "38.04 charts as 38.0");
        assert_eq!(temperature(35.05), 1, "35.05 charts as 35.1");
        assert_eq!(temperature(35.04), 3, "35.04 charts as 35.0");
        assert_eq!(temperature(36.05), 0, "36.05 charts as 36.1");
        assert_eq!(temperature(39.05), 2, "39.05 charts as 39.1");
        assert_eq!(temperature(39.049), 1, "39.049 charts as 39.0");
        let spo2 = |percent: f64, scale, oxygen| SpO2::new(percent).unwrap().points(scale, OnOxygen(oxygen));
        assert_eq!(spo2(93.5, Scale1, AIR), 1, "93.5 charts as 94");
        assert_eq!(spo2(93.49, Scale1, AIR), 2, "93.49 charts as 93");
        assert_eq!(spo2(92.5, Scale2, O2), 1, "92.5 charts as 93, on oxygen");
        assert_eq!(spo2(87.5, Scale2, AIR), 0, "87.5 charts as 88");
        assert_eq!(RespirationRate::new(20.5).unwrap().points(), 2, "20.5 charts as 21");
        assert_eq!(RespirationRate::new(8.5).unwrap().points(), 1, "8.5 charts as 9");
        assert_eq!(Pulse::new(90.5).unwrap().points(), 1, "90.5 charts as 91");
        assert_eq!(Pulse::new(40.4).unwrap().points(), 3, "40.4 charts as 40");
        assert_eq!(SystolicBp::new(219.5).unwrap().points(), 3, "219.5 charts as 220");
        assert_eq!(SystolicBp::new(110.5).unwrap().points(), 0, "110.5 charts as 111");
        // Every x.x5 in the plausible range rounds up, whatever its binary approximation.
        for hundredths in (1505..4500).step_by(10) {
            let celsius = f64::from(hundredths) / 100.0;
            assert_eq!(charted(celsius, 1), i64::from(hundredths / 10 + 1), "{celsius}");
        }
        // The reading itself is kept as sent.
        assert_eq!(Temperature::new(38.05).unwrap().celsius(), 38.05);
    }

    #[test]
    fn sensor_garbage_is_refused_naming_the_field() {
        assert_eq!(field_of(RespirationRate::new(f64::NAN)), "respiration_rate");
        assert_eq!(field_of(RespirationRate::new(-1.0)), "respiration_rate");
        assert_eq!(field_of(RespirationRate::new(150.0)), "respiration_rate");
        assert_eq!(field_of(SpO2::new(f64::NAN)), "spo2");
        assert_eq!(field_of(SpO2::new(0.0)), "spo2");
        assert_eq!(field_of(SpO2::new(101.0)), "spo2");
        assert_eq!(field_of(SpO2::new(127.0)), "spo2");
        assert_eq!(field_of(SystolicBp::new(f64::INFINITY)), "systolic_bp");
        assert_eq!(field_of(SystolicBp::new(-120.0)), "systolic_bp");
        assert_eq!(field_of(SystolicBp::new(1200.0)), "systolic_bp");
        assert_eq!(field_of(Pulse::new(f64::NEG_INFINITY)), "pulse");
        assert_eq!(field_of(Pulse::new(-72.0)), "pulse");
        assert_eq!(field_of(Pulse::new(0.0)), "pulse");
        assert_eq!(field_of(Pulse::new(720.0)), "pulse");
        assert_eq!(field_of(Temperature::new(f64::NAN)), "temperature");
        assert_eq!(field_of(Temperature::new(-37.0)), "temperature");
        assert_eq!(field_of(Temperature::new(370.0)), "temperature");
        assert_eq!(field_of(Consciousness::parse("asleep")), "consciousness");
        assert_eq!(field_of(SpO2Scale::try_from(3)), "spo2_scale");
        match Temperature::new(98.6) {
            Err(ActorError::Invalid { detail, .. }) => assert!(detail.contains("37.0 °C"), "{detail}"),
            other => panic!("{other:?}"),
        }
        // Extreme but survivable readings are scored, not refused.
        assert!(SpO2::new(55.0).is_ok() && Temperature::new(24.0).is_ok() && Pulse::new(28.0).is_ok() && RespirationRate::new(0.0).is_ok());
    }

    #[test]
    fn measurement_times_must_be_recent_and_not_in_the_future() {
        let now = now();
        assert!(check_measured_at(now, now).is_ok());
        assert!(check_measured_at(now + Duration::minutes(5), now).is_ok(), "a little monitor clock drift is fine");
        assert!(check_measured_at(now - Duration::hours(24), now).is_ok());
        assert_eq!(field_of(check_measured_at(now + Duration::minutes(5) + Duration::seconds(1), now)), "measured_at");
        assert_eq!(field_of(check_measured_at(now + Duration::days(365), now)), "measured_at");
        assert_eq!(field_of(check_measured_at(now - Duration::hours(24) - Duration::seconds(1), now)), "measured_at");
    }

    fn payload() -> Value {
        json!({
            "respiration_rate": 22, "spo2": 95, "on_oxygen": false, "systolic_bp": 118, "pulse": 104,
            "consciousness": "alert", "temperature": 38.3, "measured_at": "2026-05-01T11:14:00+01:00",
        })
    }

    #[test]
    fn a_monitor_payload_is_parsed_at_the_edge_and_scored() {
        let vitals = Vitals::parse_json(&payload().to_string(), now()).unwrap();
        assert_eq!(vitals.measured_at, now() - Duration::minutes(1));
        assert_eq!(vitals.temperature.celsius(), 38.3);
        let news2 = score(&vitals, SpO2Scale::default());
        assert_eq!(
            serde_json::to_value(news2).unwrap(),
            json!({
                "score": 5, "band": "medium", "spo2_scale": 1,
                "parameters": {"respiration_rate": 2, "spo2": 1, "on_oxygen": 0, "systolic_bp": 0, "pulse": 1, "consciousness": 0, "temperature": 1},
            })
        );
        // What is stored in an event reads back as the same observations.
        let stored = serde_json::to_value(vitals).unwrap();
        assert_eq!(stored["consciousness"], "alert");
        assert_eq!(serde_json::from_value::<Vitals>(stored).unwrap(), vitals);
        for (name, level) in [("alert", Alert), ("confusion", Confusion), ("voice", Voice), ("pain", Pain), ("unresponsive", Unresponsive)] {
            assert_eq!(serde_json::to_value(level).unwrap(), name);
            assert_eq!(Consciousness::parse(name).unwrap(), level);
        }
        for (band, name) in [(Low, "low"), (LowMedium, "low_medium"), (Medium, "medium"), (High, "high")] {
            assert_eq!(serde_json::to_value(band).unwrap(), name);
        }
        assert_eq!(serde_json::from_value::<SpO2Scale>(json!(2)).unwrap(), Scale2);
    }

    #[test]
    fn a_bad_payload_is_refused_naming_the_field() {
        let refused = |change: &dyn Fn(&mut Value)| {
            let mut json = payload();
            change(&mut json);
            field_of(Vitals::parse_json(&json.to_string(), now()))
        };
        assert_eq!(refused(&|j| j["spo2"] = json!(140)), "spo2");
        assert_eq!(refused(&|j| j["pulse"] = json!(-60)), "pulse");
        assert_eq!(refused(&|j| j["temperature"] = json!(98.6)), "temperature");
        assert_eq!(refused(&|j| j["systolic_bp"] = json!("120")), "systolic_bp");
        assert_eq!(refused(&|j| j["respiration_rate"] = Value::Null), "respiration_rate");
        assert_eq!(refused(&|j| { j.as_object_mut().unwrap().remove("temperature"); }), "temperature");
        assert_eq!(refused(&|j| j["on_oxygen"] = json!("yes")), "on_oxygen");
        assert_eq!(refused(&|j| j["consciousness"] = json!("A")), "consciousness");
        assert_eq!(refused(&|j| j["measured_at"] = json!("2026-05-01 10:14")), "measured_at");
        assert_eq!(refused(&|j| j["measured_at"] = json!("2026-05-01T10:30:00Z")), "measured_at");
        assert_eq!(refused(&|j| j["measured_at"] = json!("2026-04-29T10:14:00Z")), "measured_at");
        assert!(matches!(Vitals::parse_json(r#"{"sp02": 97}"#, now()), Err(ActorError::Invalid { field: "vitals", .. })));
        assert!(matches!(Vitals::parse_json("not json", now()), Err(ActorError::Invalid { field: "vitals", .. })));
        // Through serde (e.g. inside a larger message) the error still names the field.
        let mut json = payload();
        json["systolic_bp"] = json!(1200);
        let error = serde_json::from_value::<Vitals>(json).unwrap_err().to_string();
        assert!(error.contains("systolic_bp"), "{error}");
        assert!(serde_json::from_value::<SpO2>(json!(-3)).unwrap_err().to_string().contains("spo2"));
    }
}
