//! The script the model fakes play: a job's workflow template, turn by turn.
//!
//! A model fake does not invent. The first user message names the job
//! (`job-<N>`, and optionally a template name such as `book_flight`); the
//! number of tool results in the conversation says how far the job got. The
//! next answer is the next tool step of the template (a `tool_use` /
//! `tool_calls`), or the final answer once every tool step has a result.
//!
//! The decisions of the template's model steps come from
//! [`ProviderMock::handle`] with an rng seeded by `(seed, job, step)`, so a
//! retried or resumed turn makes the same decision, every run with the same
//! seed plays the same script, and the expected side effects of every job are
//! known in advance ([`Script::expected`]).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Value, json};

use crate::components::provider::{ModelRequest, ProviderConfig, ProviderMock};
use crate::components::workflow::{self, StepKind, Template};

/// Most tool results a conversation may carry (bounds the walk of a plan).
pub const MAX_TOOL_RESULTS: usize = workflow::MAX_STEPS;

/// Highest job number accepted in `job-<N>`.
pub const MAX_JOB: u32 = 1_000_000_000;

/// Output tokens of a turn that has no model step of its own (the model
/// only forwards the plan to the next tool).
const FORWARD_OUTPUT_TOKENS: u32 = 60;

/// What the model answers on one turn.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Call a tool.
    Tool {
        /// The template step the call performs.
        step: u16,
        /// Tool name (see [`tools`]).
        name: &'static str,
        /// Tool input (matches the tool's JSON schema).
        input: Value,
        /// Deterministic tool-call id.
        id: String,
    },
    /// The job is done: the final answer.
    Final {
        /// Answer text.
        text: String,
    },
}

/// One turn of a job: what the provider is asked to do and what it answers.
#[derive(Clone, Debug)]
pub struct Turn {
    /// The job.
    pub job: u32,
    /// The template's name.
    pub template: &'static str,
    /// The model step the turn stands for (None: a forwarding turn).
    pub model_step: Option<u16>,
    /// The request the provider mock serves.
    pub request: ModelRequest,
    /// Seed of the rng the provider draws from for this turn.
    pub rng_seed: u64,
    /// The answer when the provider succeeds.
    pub action: Action,
}

/// One side-effecting step a job must cause exactly once.
#[derive(Clone, Debug, Serialize)]
pub struct ExpectedStep {
    /// Step ordinal.
    pub step: u16,
    /// Step kind (`charge`, `refund`, `email`, `memory_write`, …).
    pub kind: &'static str,
    /// Tool name.
    pub tool: &'static str,
    /// The input the script gives the tool.
    pub input: Value,
    /// Whether the step has an external side effect (payment or email).
    pub side_effect: bool,
}

/// A tool an agent must declare.
#[derive(Clone, Debug, Serialize)]
pub struct ToolDef {
    /// Tool name.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// JSON Schema of its input.
    pub schema: Value,
}

/// Errors of the script, reported to the agent as a 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScriptError {
    /// No `job-<N>` in the first user message.
    #[error(
        "agentdrill: the first user message must name the job as `job-<N>` (for example \"Run job-7 (book_flight)\"); none found"
    )]
    NoJob,
    /// More tool results than the template has tool steps.
    #[error(
        "agentdrill: job-{job} ({template}) has {tools} tool steps but the conversation carries {results} tool results"
    )]
    TooManyResults {
        /// Job.
        job: u32,
        /// Template.
        template: &'static str,
        /// Tool steps in the template.
        tools: usize,
        /// Tool results seen.
        results: usize,
    },
}

/// The script of a served instance.
#[derive(Clone, Debug)]
pub struct Script {
    seed: u64,
    templates: Vec<Template>,
    provider: ProviderConfig,
}

/// FNV-1a over words: the seeds of per-turn rngs and tool-call ids.
fn mix(words: &[u64]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for &w in words {
        for b in w.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

impl Script {
    /// The script for `seed`, over the built-in templates (the probe excluded).
    pub fn new(seed: u64) -> Self {
        let templates: Vec<Template> = workflow::builtin().into_iter().filter(|t| t.name != "probe").collect();
        assert!(!templates.is_empty(), "no workflow templates");
        Script { seed, templates, provider: ProviderConfig::anthropic() }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The templates jobs are drawn from.
    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// Finds the job (and a named template) in the first user message.
    pub fn parse_job<'a>(&'a self, text: &str) -> Result<(u32, &'a Template), ScriptError> {
        let job = find_job(text).ok_or(ScriptError::NoJob)?;
        let named = self.templates.iter().find(|t| text.contains(t.name));
        Ok((job, named.unwrap_or_else(|| self.template_for(job))))
    }

    /// The template of `job` when the message names none (from the seed).
    pub fn template_for(&self, job: u32) -> &Template {
        let i = mix(&[self.seed, u64::from(job), 0x7e4a]) % self.templates.len() as u64;
        &self.templates[i as usize]
    }

    /// The template called `name`.
    pub fn template_named(&self, name: &str) -> Option<&Template> {
        self.templates.iter().find(|t| t.name == name)
    }

    /// The request a model step (or a forwarding turn) sends.
    fn request(t: &Template, step: Option<u16>) -> ModelRequest {
        let (options, input_tokens, output_tokens) = match step.map(|s| t.steps[s as usize].kind) {
            Some(StepKind::Model { options, input_tokens, output_tokens }) => (options, input_tokens, output_tokens),
            _ => (1, 1_800, FORWARD_OUTPUT_TOKENS),
        };
        ModelRequest {
            prefix_hash: t.prefix_hash,
            input_tokens,
            prefix_tokens: input_tokens / 2,
            output_tokens,
            options,
            defect_permille: 0,
            version: 0,
        }
    }

    fn rng_seed(&self, job: u32, step: u64) -> u64 {
        mix(&[self.seed, u64::from(job), step])
    }

    /// The decision model step `step` of `job` takes: the provider's own
    /// draw, on a scratch mock, from the step's rng.
    pub fn decision(&self, job: u32, t: &Template, step: u16) -> u32 {
        let req = Self::request(t, Some(step));
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng_seed(job, u64::from(step)));
        let mut scratch = ProviderMock::new(self.provider.clone());
        scratch.handle(0, &req, &mut rng).result.expect("a provider without outages answers").decision
    }

    /// The tool steps of `t`, in order.
    fn tool_steps(t: &Template) -> impl Iterator<Item = u16> + '_ {
        t.steps.iter().enumerate().filter(|(_, s)| !matches!(s.kind, StepKind::Model { .. })).map(|(i, _)| i as u16)
    }

    /// The turn after `results` tool results.
    pub fn turn(&self, job: u32, t: &Template, results: usize) -> Result<Turn, ScriptError> {
        let tools: Vec<u16> = Self::tool_steps(t).collect();
        if results > tools.len() {
            let (template, tools) = (t.name, tools.len());
            return Err(ScriptError::TooManyResults { job, template, tools, results });
        }
        let prev = if results == 0 { 0 } else { tools[results - 1] as usize + 1 };
        let next = tools.get(results).map_or(t.steps.len(), |&s| s as usize);
        let model_step = (prev..next).rev().find(|&i| matches!(t.steps[i].kind, StepKind::Model { .. }));
        let model_step = model_step.map(|s| s as u16);
        let rng_key = model_step.map_or(1_000 + results as u64, u64::from);
        let action = match tools.get(results) {
            Some(&step) => {
                let (name, input) = self.tool_call(job, t, step);
                let id = format!("{:024x}", u128::from(mix(&[self.seed, u64::from(job), u64::from(step), 0x1d])));
                Action::Tool { step, name, input, id }
            }
            None => Action::Final { text: format!("job-{job} ({}) is done: every step completed.", t.name) },
        };
        let request = Self::request(t, model_step);
        Ok(Turn { job, template: t.name, model_step, request, rng_seed: self.rng_seed(job, rng_key), action })
    }

    /// The tool name and input of tool step `step`.
    fn tool_call(&self, job: u32, t: &Template, step: u16) -> (&'static str, Value) {
        let spec = t.steps[step as usize];
        let decision = spec.governed_by.map_or(0, |g| self.decision(job, t, g));
        tool_input(job, spec.kind, step, decision)
    }

    /// Every tool step of `job` with its input: the ground truth of what the
    /// job must do (side effects exactly once).
    pub fn expected(&self, job: u32, t: &Template) -> Vec<ExpectedStep> {
        Self::tool_steps(t)
            .map(|step| {
                let kind = t.steps[step as usize].kind;
                let (tool, input) = self.tool_call(job, t, step);
                ExpectedStep { step, kind: kind.name(), tool, input, side_effect: kind.is_side_effect() }
            })
            .collect()
    }
}

/// The first `job-<N>` in `text`.
pub fn find_job(text: &str) -> Option<u32> {
    let mut rest = text;
    while let Some(at) = rest.find("job-") {
        let digits: String = rest[at + 4..].chars().take_while(char::is_ascii_digit).take(10).collect();
        if let Ok(n) = digits.parse::<u32>()
            && n <= MAX_JOB
        {
            return Some(n);
        }
        rest = &rest[at + 4..];
    }
    None
}

/// The tool name and input of tool step `step` (of kind `kind`) of `job`,
/// made with `decision` of the model step that governs it: the one
/// rendering of a tool call, used by the script and by the live reference
/// stack's worker to speak the tools' wire shape.
pub fn tool_input(job: u32, kind: StepKind, step: u16, decision: u32) -> (&'static str, Value) {
    let args = workflow::args_for(job, step, decision);
    let tag = format!("job-{job}");
    let meta = json!({ "job_id": tag, "step": step.to_string() });
    let vector: Vec<f32> = (0..4).map(|i| ((args >> (i * 16)) & 0xffff) as f32 / 65_535.0 + 0.01).collect();
    match kind {
        StepKind::Search => ("search", json!({ "query": format!("{tag}: options for plan {decision}") })),
        StepKind::Charge => (
            "charge_card",
            json!({ "amount": 1_000 + args % 99_000, "currency": "usd",
                    "description": format!("{tag}: option {decision}"), "metadata": meta }),
        ),
        StepKind::Refund => (
            "refund_payment",
            json!({ "payment_intent": format!("pi_hist_job{job}"), "amount": 500 + args % 9_500, "metadata": meta }),
        ),
        StepKind::Email => (
            "send_email",
            json!({ "to": format!("customer-{job}@example.com"), "subject": format!("{tag}: confirmation"),
                    "text": format!("Decision {decision}, reference {args:016x}."),
                    "tags": [{ "name": "job_id", "value": tag }, { "name": "step", "value": step.to_string() }] }),
        ),
        StepKind::MemWrite => (
            "memory_write",
            json!({ "collection": "memory", "id": u64::from(job) * 65_536 + u64::from(step), "vector": vector,
                    "payload": { "job_id": tag, "step": step, "summary": format!("decision {decision}") } }),
        ),
        StepKind::MemRead => ("memory_read", json!({ "collection": "memory", "vector": vector, "limit": 3 })),
        StepKind::Model { .. } => unreachable!("model steps are not tool calls"),
    }
}

/// The decision of the model step governing tool step `step` of `job` that
/// makes a tool call with `input` (the inverse of [`tool_input`]); `None`
/// when no decision does (the input was not made by this script).
pub fn decision_of(job: u32, t: &Template, step: u16, input: &Value) -> Option<u32> {
    let spec = t.steps.get(step as usize)?;
    let options = match spec.governed_by.map(|g| t.steps[g as usize].kind) {
        Some(StepKind::Model { options, .. }) => options,
        _ => 1,
    };
    // Floats may not survive a JSON round trip bit for bit: the vector (a
    // function of the same arguments as the rest) is left out.
    let strip = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().map(|o| o.remove("vector"));
        v
    };
    let input = strip(input);
    (0..options).find(|&d| strip(&tool_input(job, spec.kind, step, d).1) == input)
}

/// The tools an agent must declare, with their JSON schemas.
pub fn tools() -> Vec<ToolDef> {
    let meta = json!({ "type": "object", "properties": { "job_id": { "type": "string" }, "step": { "type": "string" } },
                       "required": ["job_id", "step"] });
    let vector = json!({ "type": "array", "items": { "type": "number" }, "minItems": 4, "maxItems": 4 });
    vec![
        ToolDef {
            name: "search",
            description: "Search the web or flight inventory (read-only).",
            schema: json!({ "type": "object", "properties": { "query": { "type": "string" } }, "required": ["query"] }),
        },
        ToolDef {
            name: "charge_card",
            description: "Charge the customer's card: a confirmed PaymentIntent at the payment API.",
            schema: json!({ "type": "object", "properties": {
                "amount": { "type": "integer", "minimum": 1 }, "currency": { "type": "string" },
                "description": { "type": "string" }, "metadata": meta }, "required": ["amount", "currency", "metadata"] }),
        },
        ToolDef {
            name: "refund_payment",
            description: "Refund part or all of an earlier payment.",
            schema: json!({ "type": "object", "properties": {
                "payment_intent": { "type": "string" }, "amount": { "type": "integer", "minimum": 1 }, "metadata": meta },
                "required": ["payment_intent", "amount", "metadata"] }),
        },
        ToolDef {
            name: "send_email",
            description: "Send an email to the customer through the email API.",
            schema: json!({ "type": "object", "properties": {
                "to": { "type": "string" }, "subject": { "type": "string" }, "text": { "type": "string" },
                "tags": { "type": "array", "items": { "type": "object", "properties": {
                    "name": { "type": "string" }, "value": { "type": "string" } }, "required": ["name", "value"] } } },
                "required": ["to", "subject", "text", "tags"] }),
        },
        ToolDef {
            name: "memory_write",
            description: "Upsert a point into the vector memory.",
            schema: json!({ "type": "object", "properties": {
                "collection": { "type": "string" }, "id": { "type": "integer", "minimum": 0 }, "vector": vector,
                "payload": { "type": "object" } }, "required": ["collection", "id", "vector", "payload"] }),
        },
        ToolDef {
            name: "memory_read",
            description: "Query the vector memory for the nearest points.",
            schema: json!({ "type": "object", "properties": {
                "collection": { "type": "string" }, "vector": vector, "limit": { "type": "integer", "minimum": 1 } },
                "required": ["collection", "vector", "limit"] }),
        },
    ]
}

/// The tools in the Anthropic Messages API's form.
pub fn anthropic_tools() -> Value {
    tools()
        .into_iter()
        .map(|t| json!({ "name": t.name, "description": t.description, "input_schema": t.schema }))
        .collect()
}

/// The tools in the OpenAI Chat Completions API's form.
pub fn openai_tools() -> Value {
    tools()
        .into_iter()
        .map(|t| json!({ "type": "function", "function": { "name": t.name, "description": t.description, "parameters": t.schema } }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_job_and_walks_the_plan_to_the_final_answer() {
        let s = Script::new(7);
        let (job, t) = s.parse_job("Please run job-42 (book_flight) now").unwrap();
        assert_eq!((job, t.name), (42, "book_flight"));
        let names: Vec<_> = (0..=4)
            .map(|k| match s.turn(job, t, k).unwrap().action {
                Action::Tool { name, .. } => name,
                Action::Final { .. } => "final",
            })
            .collect();
        assert_eq!(names, ["search", "charge_card", "memory_write", "send_email", "final"]);
        assert!(matches!(s.turn(job, t, 5), Err(ScriptError::TooManyResults { .. })));
        assert_eq!(s.parse_job("no job here").unwrap_err(), ScriptError::NoJob);
    }

    #[test]
    fn deterministic_from_the_seed_and_decisions_shape_arguments() {
        let (a, b) = (Script::new(1), Script::new(1));
        let t = a.template_named("book_flight").unwrap().clone();
        let ex = |s: &Script, job| serde_json::to_string(&s.expected(job, &t)).unwrap();
        assert_eq!(ex(&a, 3), ex(&b, 3));
        assert_ne!(ex(&a, 3), ex(&a, 4), "jobs differ");
        let turn = a.turn(3, &t, 1).unwrap();
        assert_eq!(turn.model_step, Some(2), "the charge is decided by model step 2");
        let expected = a.expected(3, &t);
        assert_eq!(expected.iter().filter(|e| e.side_effect).count(), 2);
    }

    #[test]
    fn tool_schemas_validate_the_scripted_inputs() {
        let s = Script::new(9);
        let schemas: Vec<ToolDef> = tools();
        for t in s.templates().to_vec() {
            for e in s.expected(11, &t) {
                let def = schemas.iter().find(|d| d.name == e.tool).expect("declared tool");
                let v = jsonschema::validator_for(&def.schema).unwrap();
                assert!(v.is_valid(&e.input), "{} {}", e.tool, e.input);
            }
        }
        assert_eq!(anthropic_tools().as_array().unwrap().len(), openai_tools().as_array().unwrap().len());
    }
}
