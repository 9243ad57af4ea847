//! Chat prompts without special-token injection.
//!
//! The model's template is rendered with a unique marker in place of each message's content.
//! The rendered text is then split at the markers: the template's own scaffolding is tokenized
//! with special-token parsing (so `<|im_start|>` becomes the control token), and every message
//! content is tokenized without it (so a user typing `<|im_end|>` gets plain text tokens).
//!
//! Templates are rendered by llama.cpp's built-in list when it recognises the model's template
//! (ChatML, Llama, Mistral, …); any other Jinja template embedded in the GGUF is rendered with
//! minijinja (Python-compatible methods, `raise_exception`, `strftime_now`, HF's block trimming).

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::ApplyChatTemplateError;
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

use crate::EngineError;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or `tool`).
    pub role: String,
    /// The text.
    pub content: String,
}

fn marker(i: usize) -> String {
    // Private-use code points: never produced by tokenizers' normal text, never trimmed.
    format!("\u{F8FF}mbx{i}\u{F8FF}")
}

/// Tokens for `messages` with the assistant turn opened, and the rendered text (for logs/tests).
pub fn tokenize_chat(model: &LlamaModel, messages: &[ChatMessage]) -> Result<(Vec<LlamaToken>, String), EngineError> {
    let tmpl = model.chat_template(None).ok();
    let rendered = render(model, tmpl.as_ref(), messages)?;
    let vocab = model.vocab();
    // BOS only when the vocabulary wants it and the template did not write it already.
    let bos_text = String::from_utf8_lossy(&vocab.token_to_piece(vocab.bos(), true, None)).into_owned();
    let add_bos = vocab.should_add_bos() && (bos_text.is_empty() || !rendered.starts_with(&bos_text));
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut rest = rendered.as_str();
    let mut first = true;
    for (i, m) in messages.iter().enumerate() {
        let mk = marker(i);
        let Some(at) = rest.find(&mk) else {
            return Err(EngineError::Template(format!("the chat template dropped message {i} ({})", m.role)));
        };
        let scaffold = &rest[..at];
        tokens.extend(vocab.tokenize(scaffold.as_bytes(), first && add_bos, true));
        tokens.extend(vocab.tokenize(m.content.as_bytes(), false, false));
        text.push_str(scaffold);
        text.push_str(&m.content);
        rest = &rest[at + mk.len()..];
        first = false;
    }
    tokens.extend(vocab.tokenize(rest.as_bytes(), first && add_bos, true));
    text.push_str(rest);
    Ok((tokens, text))
}

/// The conversation rendered with markers in place of the contents: by llama.cpp's built-in
/// templates when one matches, else by minijinja from the GGUF's Jinja source; ChatML when the
/// model has no template at all.
pub(crate) fn render(
    model: &LlamaModel,
    tmpl: Option<&LlamaChatTemplate>,
    messages: &[ChatMessage],
) -> Result<String, EngineError> {
    let chatml;
    let tmpl = match tmpl {
        Some(t) => t,
        None => {
            chatml = LlamaChatTemplate::new("chatml").map_err(|e| EngineError::Template(e.to_string()))?;
            &chatml
        }
    };
    let marked: Vec<LlamaChatMessage> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| LlamaChatMessage::new(m.role.clone(), marker(i)))
        .collect::<Result<_, _>>()
        .map_err(|e| EngineError::Template(e.to_string()))?;
    match model.apply_chat_template(tmpl, &marked, true) {
        Ok(s) => Ok(s),
        // llama.cpp returns -1 for a template it does not recognise.
        Err(ApplyChatTemplateError::FfiError(_)) => {
            let source = tmpl.to_str().map_err(|e| EngineError::Template(e.to_string()))?;
            let vocab = model.vocab();
            let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
            let roles: Vec<(String, String)> =
                messages.iter().enumerate().map(|(i, m)| (m.role.clone(), marker(i))).collect();
            render_jinja(source, &roles, &piece(vocab.bos()), &piece(vocab.eos()))
        }
        Err(e) => Err(EngineError::Template(e.to_string())),
    }
}

/// Render a Hugging Face-style Jinja chat template with the assistant turn opened.
pub(crate) fn render_jinja(
    source: &str,
    messages: &[(String, String)],
    bos_token: &str,
    eos_token: &str,
) -> Result<String, EngineError> {
    let mut env = Environment::new();
    // transformers renders chat templates with trim_blocks and lstrip_blocks on.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, JinjaError> {
        Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| strftime(&fmt, now_days_and_secs()));
    let err = |e: JinjaError| EngineError::Template(format!("the model's Jinja chat template failed: {e:#}"));
    env.add_template("chat", source).map_err(err)?;
    let msgs: Vec<minijinja::Value> =
        messages.iter().map(|(role, content)| context! { role => role, content => content }).collect();
    env.get_template("chat")
        .map_err(err)?
        .render(context! {
            messages => msgs,
            add_generation_prompt => true,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .map_err(err)
}

fn now_days_and_secs() -> (i64, i64) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    (secs.div_euclid(86_400), secs.rem_euclid(86_400))
}

/// The subset of `strftime` that chat templates use (`%d %b %Y`, `%B`, `%m`, `%y`, `%H:%M`),
/// in UTC, from days since the epoch and seconds into the day.
fn strftime(fmt: &str, (days, secs): (i64, i64)) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out += &format!("{day:02}"),
            Some('m') => out += &format!("{month:02}"),
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('b') => out += &name[..3],
            Some('B') => out += name,
            Some('H') => out += &format!("{:02}", secs / 3600),
            Some('M') => out += &format!("{:02}", secs % 3600 / 60),
            Some('S') => out += &format!("{:02}", secs % 60),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Tokens for a raw completion prompt (no special-token parsing: the caller's text is text).
pub fn tokenize_prompt(model: &LlamaModel, prompt: &str) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    vocab.tokenize(prompt.as_bytes(), vocab.should_add_bos(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-02-29 12:34:56 UTC is day 19782 since the epoch.
        assert_eq!(strftime("%d %b %Y", (19_782, 45_296)), "29 Feb 2024");
        assert_eq!(strftime("%B %d, %y %H:%M:%S %%", (19_782, 45_296)), "February 29, 24 12:34:56 %");
        assert_eq!(strftime("%Y-%m-%d", (0, 0)), "1970-01-01");
    }

    #[test]
    fn jinja_templates_render_like_transformers() {
        // A Gemma-style template: not in llama.cpp's list when written this way, uses
        // raise_exception, Python string methods and block trimming.
        let tmpl = r#"{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}
{% for message in messages %}
    {% set role = 'model' if message['role'] == 'assistant' else message['role'] %}
{{ '<turn|' + role + '>\n' + message['content'] | trim + '<end|>\n' }}
{% endfor %}
{% if add_generation_prompt %}{{ '<turn|model>\n' }}{% endif %}"#;
        let msgs = vec![("user".to_owned(), "  hi  ".to_owned()), ("assistant".to_owned(), "yo".to_owned())];
        let out = render_jinja(tmpl, &msgs, "<s>", "</s>").unwrap();
        // The newline after an expression line stays (trim_blocks trims only after block tags).
        assert_eq!(out, "<s><turn|user>\nhi<end|>\n\n<turn|model>\nyo<end|>\n\n<turn|model>\n");
        let err = render_jinja(tmpl, &[("system".to_owned(), "x".to_owned())], "", "").unwrap_err();
        assert!(err.to_string().contains("System role not supported"), "{err}");
        let py =
            "{{ messages[0]['content'].strip().upper() }}{% if messages[0]['content'].startswith(' a') %}!{% endif %}";
        assert_eq!(render_jinja(py, &[("user".into(), " abc ".into())], "", "").unwrap(), "ABC!");
    }

    #[test]
    fn unknown_templates_fall_back_to_jinja_with_user_text_inert() {
        let dir = std::env::var_os("MAASBOX_MODELS_DIR").map_or_else(
            || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/cache"),
            std::path::PathBuf::from,
        );
        let params = llama_cpp_2::model::params::LlamaModelParams::default();
        let model =
            LlamaModel::load_from_file(crate::backend().unwrap(), dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"), &params)
                .expect("run models/fetch.py first");
        let msgs = [ChatMessage { role: "user".into(), content: "say <|im_end|> hi".into() }];
        // SmolLM2's own template is ChatML, which llama.cpp renders itself.
        let builtin = render(&model, model.chat_template(None).ok().as_ref(), &msgs).unwrap();
        assert_eq!(builtin, format!("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", marker(0)));
        // A template outside llama.cpp's list goes through minijinja.
        let custom = LlamaChatTemplate::new(
            "{% for m in messages %}<|im_start|>[{{ m.role | upper }}]{{ m.content }}{% endfor %}\
             {% if add_generation_prompt %}[ASSISTANT]{% endif %}",
        )
        .unwrap();
        // `<|im_start|>` in the template makes llama.cpp pick ChatML; a template without it:
        let custom2 = LlamaChatTemplate::new(
            "{% for m in messages %}[{{ m.role | upper }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}",
        )
        .unwrap();
        assert!(render(&model, Some(&custom), &msgs).unwrap().starts_with("<|im_start|>user"));
        assert_eq!(render(&model, Some(&custom2), &msgs).unwrap(), format!("[USER]{}[ASSISTANT]", marker(0)));
        // A template that fails names the failure.
        let broken = LlamaChatTemplate::new("{{ raise_exception('no users here') }}").unwrap();
        let err = render(&model, Some(&broken), &msgs).unwrap_err();
        assert!(err.to_string().contains("no users here"), "{err}");
    }
}
