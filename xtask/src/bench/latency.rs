//! Latency distributions of the service bench, and how sure a comparison of them is.
//!
//! A p99 of one short window on a shared machine says more about the machine's neighbours
//! than about the tool: here, two alone windows seconds apart differ by half. So the bench
//! pools every window of a variant into one distribution, and puts a confidence interval
//! on each comparison by resampling whole rounds (a round holds one window of every
//! variant, close in time, so resampling rounds keeps that pairing).

use anyhow::{Context as _, bail};

/// Bins grow by this factor: a percentile read from a bin is within 0.25% of the exact one,
/// fine for a 3% budget, and a histogram stays a few thousand counters however long it runs.
const BIN_GROWTH: f64 = 1.005;
/// Latencies from this many microseconds (a minute) up share the last bin.
const MAX_MICROS: f64 = 60e6;

/// Request latencies in microseconds, in logarithmic bins (bin 0 holds 0 µs; bin b ≥ 1
/// holds [g^(b-1), g^b) with g = `BIN_GROWTH`).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; bin_of(MAX_MICROS as u64) + 1] }
    }
}

fn bin_of(micros: u64) -> usize {
    if micros == 0 {
        return 0;
    }
    let micros = (micros as f64).min(MAX_MICROS);
    1 + (micros.ln() / BIN_GROWTH.ln()) as usize
}

/// The geometric middle of a bin.
fn bin_value(bin: usize) -> f64 {
    if bin == 0 { 0.0 } else { BIN_GROWTH.powf(bin as f64 - 0.5) }
}

impl Histogram {
    /// Reads the load generator's `latencies_us <µs>:<count> …` line.
    pub fn parse(line: &str) -> anyhow::Result<Self> {
        let Some(pairs) = line.strip_prefix("latencies_us") else {
            bail!("not a latencies_us line: {:.60}", line);
        };
        let mut histogram = Self::default();
        for pair in pairs.split_whitespace() {
            let parsed = pair.split_once(':').and_then(|(micros, count)| {
                Some((micros.parse::<u64>().ok()?, count.parse::<u64>().ok()?))
            });
            let (micros, count) =
                parsed.with_context(|| format!("bad latency {pair:?} (want <µs>:<count>)"))?;
            histogram.counts[bin_of(micros)] += count;
        }
        Ok(histogram)
    }

    pub fn add(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The latency (µs) with a fraction `q` of the requests below it: the value at index
    /// ⌊n·q⌋ of the sorted latencies, as the load generator computes it for one window.
    pub fn percentile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q) as u64).min(total - 1);
        let mut below = 0;
        for (bin, &count) in self.counts.iter().enumerate() {
            below += count;
            if below > rank {
                return Some(bin_value(bin));
            }
        }
        None
    }
}

/// All of these windows as one distribution.
pub fn pooled<'a>(windows: impl IntoIterator<Item = &'a Histogram>) -> Histogram {
    let mut all = Histogram::default();
    for window in windows {
        all.add(window);
    }
    all
}

/// Fewer rounds than this give no interval: resampling two or three rounds yields a narrow
/// interval that means nothing.
pub const MIN_ROUNDS_FOR_INTERVAL: usize = 5;

/// A percentile of a variant over the same percentile of the baseline, with a 95%
/// confidence interval ([0, ∞) when there were too few rounds to say).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioEstimate {
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
}

impl RatioEstimate {
    /// An estimate of `ratio` within `low` to `high`, for the verdicts' unit tests.
    #[cfg(test)]
    pub fn new(ratio: f64, low: f64, high: f64) -> Self {
        Self { ratio, low, high }
    }

    /// The change against the baseline: `+1.3%`.
    pub fn change_text(&self) -> String {
        percent_change(self.ratio)
    }

    /// The interval as changes, `-5.0% to +9.8%`; None when there were too few rounds.
    pub fn interval_text(&self) -> Option<String> {
        self.interval_of(percent_change).map(|(low, high)| format!("{low} to {high}"))
    }

    /// The interval's ends written by `text`; None when there were too few rounds.
    pub fn interval_of(&self, text: impl Fn(f64) -> String) -> Option<(String, String)> {
        (!self.high.is_infinite()).then(|| (text(self.low), text(self.high)))
    }
}

fn percent_change(ratio: f64) -> String {
    format!("{:+.1}%", 100.0 * (ratio - 1.0))
}

/// Compares percentile `q` of the pooled `variant` windows with that of the pooled
/// `baseline` windows; window i of each must come from the same round. The interval is a
/// percentile bootstrap over rounds with a fixed seed, so a rerun on the same data gives
/// the same interval.
pub fn percentile_ratio(
    baseline: &[Histogram],
    variant: &[Histogram],
    q: f64,
    resamples: u32,
) -> Option<RatioEstimate> {
    let rounds = baseline.len().min(variant.len());
    if rounds == 0 {
        return None;
    }
    let ratio =
        pooled(&variant[..rounds]).percentile(q)? / pooled(&baseline[..rounds]).percentile(q)?;
    if rounds < MIN_ROUNDS_FOR_INTERVAL {
        return Some(RatioEstimate { ratio, low: 0.0, high: f64::INFINITY });
    }
    let mut random = SplitMix64(0x7261_6365_7231_3939);
    let mut ratios: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            let (mut base, mut other) = (Histogram::default(), Histogram::default());
            for _ in 0..rounds {
                let round = (random.next() % rounds as u64) as usize;
                base.add(&baseline[round]);
                other.add(&variant[round]);
            }
            Some(other.percentile(q)? / base.percentile(q)?)
        })
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let at = |p: f64| ratios[((ratios.len() - 1) as f64 * p).round() as usize];
    Some(RatioEstimate { ratio, low: at(0.025), high: at(0.975) })
}

/// The median of `variant` over the median of `baseline`, rates from the same rounds (value
/// i of each from round i), with a 95% percentile-bootstrap interval over rounds (fixed
/// seed); [0, ∞) below MIN_ROUNDS_FOR_INTERVAL rounds.
pub fn median_ratio(baseline: &[f64], variant: &[f64]) -> Option<RatioEstimate> {
    of_round_medians(&[baseline, variant], |medians| {
        (medians[0] > 0.0).then(|| medians[1] / medians[0])
    })
}

/// `statistic` of the medians of `series` (value i of each from round i), with a 95%
/// percentile-bootstrap interval over rounds: each resample picks rounds, keeping a round's
/// values together, since the arms of one round ran close in time. Fixed seed; [0, ∞) below
/// MIN_ROUNDS_FOR_INTERVAL rounds; None without rounds or when `statistic` has no value.
pub fn of_round_medians(
    series: &[&[f64]],
    statistic: impl Fn(&[f64]) -> Option<f64>,
) -> Option<RatioEstimate> {
    const RESAMPLES: u32 = 2000;
    let rounds = series.iter().map(|values| values.len()).min()?;
    if rounds == 0 {
        return None;
    }
    let medians_of = |picks: &[usize]| -> Vec<f64> {
        series.iter().map(|values| median(picks.iter().map(|&i| values[i]).collect())).collect()
    };
    let all: Vec<usize> = (0..rounds).collect();
    let ratio = statistic(&medians_of(&all))?;
    if rounds < MIN_ROUNDS_FOR_INTERVAL {
        return Some(RatioEstimate { ratio, low: 0.0, high: f64::INFINITY });
    }
    let mut random = SplitMix64(0x7261_6365_7231_3535);
    let mut ratios: Vec<f64> = (0..RESAMPLES)
        .filter_map(|_| {
            let picks: Vec<usize> =
                (0..rounds).map(|_| (random.next() % rounds as u64) as usize).collect();
            statistic(&medians_of(&picks))
        })
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let at = |p: f64| ratios[((ratios.len() - 1) as f64 * p).round() as usize];
    Some(RatioEstimate { ratio, low: at(0.025), high: at(0.975) })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 }
}

/// Sebastiano Vigna's SplitMix64: enough randomness for resampling, and no dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(latencies: &[(u64, u64)]) -> Histogram {
        let line: Vec<String> = latencies.iter().map(|(us, n)| format!("{us}:{n}")).collect();
        Histogram::parse(&format!("latencies_us {}", line.join(" "))).expect("parses")
    }

    fn close(a: f64, b: f64) -> bool {
        (a / b - 1.0).abs() <= 0.003
    }

    #[test]
    fn percentiles_match_the_exact_ones_within_a_bin() {
        // 1..=1000 µs once each: the value at index ⌊n·q⌋ is 1 + ⌊1000·q⌋.
        let all: Vec<(u64, u64)> = (1..=1000).map(|us| (us, 1)).collect();
        let h = histogram(&all);
        assert_eq!(h.count(), 1000);
        for (q, exact) in [(0.5, 501.0), (0.99, 991.0), (0.999, 1000.0), (0.0, 1.0)] {
            let got = h.percentile(q).expect("not empty");
            assert!(close(got, exact), "q {q}: {got} vs {exact}");
        }
    }

    #[test]
    fn zero_and_huge_latencies_have_their_bins() {
        let h = histogram(&[(0, 98), (5_000_000_000, 2)]);
        assert_eq!(h.percentile(0.5), Some(0.0));
        let top = h.percentile(0.99).expect("not empty");
        assert!(close(top, MAX_MICROS), "{top}");
    }

    #[test]
    fn empty_and_malformed_lines() {
        assert_eq!(histogram(&[]).percentile(0.99), None);
        assert!(Histogram::parse("latencies_us 12:3 oops").is_err());
        assert!(Histogram::parse("http 20000 p50_us 1").is_err());
    }

    #[test]
    fn pooling_adds_the_windows() {
        let fast = histogram(&[(100, 99), (200, 1)]);
        let slow = histogram(&[(1000, 100)]);
        let both = pooled([&fast, &slow]);
        assert_eq!(both.count(), 200);
        assert!(close(both.percentile(0.25).expect("not empty"), 100.0));
        assert!(close(both.percentile(0.75).expect("not empty"), 1000.0));
    }

    #[test]
    fn a_uniformly_slower_variant_shows_its_ratio_with_a_tight_interval() {
        let base: Vec<Histogram> =
            (0..8).map(|round| histogram(&[(100 + round, 90), (1000 + 10 * round, 10)])).collect();
        let slower: Vec<Histogram> =
            (0..8).map(|round| histogram(&[(110 + round, 90), (1100 + 11 * round, 10)])).collect();
        let estimate = percentile_ratio(&base, &slower, 0.95, 200).expect("estimates");
        assert!(close(estimate.ratio, 1.1), "{estimate:?}");
        assert!(estimate.low > 1.08 && estimate.high < 1.12, "{estimate:?}");
    }

    #[test]
    fn a_median_ratio_brackets_a_steady_loss_and_needs_five_rounds() {
        let alone = [100.0, 102.0, 98.0, 101.0, 99.0, 100.0];
        let traced: Vec<f64> = alone.iter().map(|rate| rate * 0.9).collect();
        let estimate = median_ratio(&alone, &traced).unwrap();
        assert!((estimate.ratio - 0.9).abs() < 1e-9, "{estimate:?}");
        assert!(
            estimate.low <= 0.9 && estimate.high >= 0.9 && estimate.high < 0.95,
            "{estimate:?}"
        );
        let few = median_ratio(&alone[..3], &traced[..3]).unwrap();
        assert!(few.high.is_infinite());
        assert!(median_ratio(&[], &traced).is_none());
    }

    #[test]
    fn a_statistic_of_several_arms_is_resampled_by_round() {
        // A machine whose speed swings by round, the same for every arm in a round: the
        // share of one loss in another is steady, and pairing by round keeps it tight.
        let speed = [1.0, 1.3, 0.8, 1.1, 0.9, 1.2, 1.0, 0.85];
        let alone: Vec<f64> = speed.iter().map(|s| 100.0 * s).collect();
        let light: Vec<f64> = speed.iter().map(|s| 90.0 * s).collect();
        let heavy: Vec<f64> = speed.iter().map(|s| 50.0 * s).collect();
        let share = |m: &[f64]| {
            let peer_loss = 1.0 - m[2] / m[0];
            (peer_loss > 0.0).then(|| (1.0 - m[1] / m[0]) / peer_loss)
        };
        let estimate = of_round_medians(&[&alone, &light, &heavy], share).unwrap();
        assert!((estimate.ratio - 0.2).abs() < 1e-9, "{estimate:?}");
        assert!(estimate.low > 0.19 && estimate.high < 0.21, "{estimate:?}");
        // Unpaired, the same swings leave the share unknown.
        let mut shuffled = heavy.clone();
        shuffled.rotate_left(3);
        let loose = of_round_medians(&[&alone, &light, &shuffled], share).unwrap();
        assert!(loose.high - loose.low > 0.1, "{loose:?}");
        // No value of the statistic, no estimate.
        assert!(of_round_medians(&[&alone, &alone, &alone], share).is_none());
    }

    #[test]
    fn too_few_rounds_give_no_interval() {
        let base = vec![histogram(&[(100, 100)]); MIN_ROUNDS_FOR_INTERVAL - 1];
        let slower = vec![histogram(&[(120, 100)]); MIN_ROUNDS_FOR_INTERVAL - 1];
        let estimate = percentile_ratio(&base, &slower, 0.5, 100).expect("estimates");
        assert!(close(estimate.ratio, 1.2), "{estimate:?}");
        assert_eq!((estimate.low, estimate.high), (0.0, f64::INFINITY));
    }

    #[test]
    fn noisy_rounds_widen_the_interval_and_the_seed_is_fixed() {
        // Rounds whose tail swings tenfold, the same in both arms: the ratio is 1, but the
        // interval must not claim more than the data show.
        let noisy: Vec<Histogram> = (0..10)
            .map(|round| {
                if round % 3 == 0 {
                    histogram(&[(100, 95), (10_000, 5)])
                } else {
                    histogram(&[(100, 99), (1000, 1)])
                }
            })
            .collect();
        let shifted: Vec<Histogram> =
            noisy.iter().skip(1).chain(noisy.iter().take(1)).cloned().collect();
        let estimate = percentile_ratio(&noisy, &shifted, 0.99, 300).expect("estimates");
        assert!(estimate.low < 0.9 && estimate.high > 1.1, "{estimate:?}");
        assert_eq!(Some(estimate), percentile_ratio(&noisy, &shifted, 0.99, 300));
    }
}
