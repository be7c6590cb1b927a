//! Repeats and their summary: median and spread.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
}

impl Summary {
    pub fn of(v: Vec<f64>) -> Self {
        let mut v: Vec<f64> = v.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                samples: 0,
            };
        }
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
            samples: n,
        }
    }

    /// A quantile (0..=1) of raw samples.
    pub fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        let idx = ((v.len() - 1) as f64 * q).round() as usize;
        v[idx]
    }
}
