// zh-CN and en. The choice is remembered; the default follows the browser/OS language.
import { signalLang } from "./state";

export type Lang = "en" | "zh-CN";

const en = {
  "app.title": "maasbox",
  "nav.chat": "Chat",
  "nav.knowledge": "Knowledge",
  "nav.logout": "Log out",
  "lang.switch": "中文",
  "setup.title": "Set up maasbox",
  "setup.intro": "Create the first administrator. The one-time setup code was printed by the server and written to setup.token in its data directory.",
  "setup.code": "Setup code",
  "setup.submit": "Create administrator",
  "login.title": "Sign in",
  "login.username": "Username",
  "login.password": "Password",
  "login.submit": "Sign in",
  "chat.model": "Model",
  "chat.placeholder": "Send a message (Enter to send, Shift+Enter for a new line)",
  "chat.send": "Send",
  "chat.stop": "Stop",
  "chat.new": "New chat",
  "chat.knowledge": "Use knowledge",
  "chat.sources": "Sources",
  "chat.empty": "No models yet: import one on the server (maasbox model import).",
  "kb.title": "Knowledge bases",
  "kb.create": "Create",
  "kb.name": "Name",
  "kb.description": "Description",
  "kb.documents": "Documents",
  "kb.chunks": "Chunks",
  "kb.upload": "Add documents",
  "kb.uploading": "Uploading",
  "kb.search": "Search",
  "kb.query": "Ask or type keywords",
  "kb.mode": "Mode",
  "kb.delete": "Delete",
  "kb.confirmDelete": "Delete the knowledge base “{name}” and all its documents?",
  "kb.status": "Status",
  "kb.noResults": "No results.",
  "kb.progress": "{parsed} parsed, {embedded}/{chunked} chunks embedded",
  "common.loading": "Loading…",
  "common.cancel": "Cancel",
  "err.unauthenticated": "Please sign in again.",
  "err.invalid_credentials": "Wrong username or password.",
  "err.invalid_setup_code": "The setup code is not right.",
  "err.forbidden": "You are not allowed to do this.",
  "err.not_found": "Not found.",
  "err.model_not_found": "That model does not exist or is not available to you.",
  "err.rate_limit_exceeded": "Too many requests; try again in a moment.",
  "err.insufficient_quota": "Your token quota is used up.",
  "err.context_length_exceeded": "The conversation is too long for this model.",
  "err.conflict": "That name is already taken.",
  "err.network": "The server cannot be reached.",
  "err.generic": "Something went wrong: {message}",
};

const zh: Record<keyof typeof en, string> = {
  "app.title": "maasbox",
  "nav.chat": "对话",
  "nav.knowledge": "知识库",
  "nav.logout": "退出登录",
  "lang.switch": "English",
  "setup.title": "初始化 maasbox",
  "setup.intro": "创建第一个管理员。一次性初始化码由服务器打印，并写入数据目录中的 setup.token。",
  "setup.code": "初始化码",
  "setup.submit": "创建管理员",
  "login.title": "登录",
  "login.username": "用户名",
  "login.password": "密码",
  "login.submit": "登录",
  "chat.model": "模型",
  "chat.placeholder": "输入消息（Enter 发送，Shift+Enter 换行）",
  "chat.send": "发送",
  "chat.stop": "停止",
  "chat.new": "新对话",
  "chat.knowledge": "使用知识库",
  "chat.sources": "引用来源",
  "chat.empty": "还没有模型：请在服务器上导入（maasbox model import）。",
  "kb.title": "知识库",
  "kb.create": "创建",
  "kb.name": "名称",
  "kb.description": "描述",
  "kb.documents": "文档",
  "kb.chunks": "分块",
  "kb.upload": "添加文档",
  "kb.uploading": "上传中",
  "kb.search": "检索",
  "kb.query": "输入问题或关键词",
  "kb.mode": "方式",
  "kb.delete": "删除",
  "kb.confirmDelete": "删除知识库“{name}”及其全部文档？",
  "kb.status": "状态",
  "kb.noResults": "没有结果。",
  "kb.progress": "已解析 {parsed} 个，已向量化 {embedded}/{chunked} 个分块",
  "common.loading": "加载中…",
  "common.cancel": "取消",
  "err.unauthenticated": "请重新登录。",
  "err.invalid_credentials": "用户名或密码错误。",
  "err.invalid_setup_code": "初始化码不正确。",
  "err.forbidden": "您没有执行此操作的权限。",
  "err.not_found": "未找到。",
  "err.model_not_found": "该模型不存在或您无权使用。",
  "err.rate_limit_exceeded": "请求过于频繁，请稍后再试。",
  "err.insufficient_quota": "您的令牌配额已用完。",
  "err.context_length_exceeded": "对话内容超出了该模型的上下文长度。",
  "err.conflict": "该名称已被占用。",
  "err.network": "无法连接服务器。",
  "err.generic": "出错了：{message}",
};

export type Key = keyof typeof en;
const tables: Record<Lang, Record<Key, string>> = { en, "zh-CN": zh };

export function initialLang(stored: string | null, browser: readonly string[]): Lang {
  if (stored === "en" || stored === "zh-CN") return stored;
  return browser.some((l) => l.toLowerCase().startsWith("zh")) ? "zh-CN" : "en";
}

export function translate(lang: Lang, key: Key, vars: Record<string, string | number> = {}): string {
  return tables[lang][key].replace(/\{(\w+)\}/g, (_, k) => String(vars[k] ?? `{${k}}`));
}

export function t(key: Key, vars?: Record<string, string | number>): string {
  return translate(signalLang.value, key, vars);
}

/// An API error in the user's language: known codes get a sentence, others the server's message.
export function errorText(lang: Lang, code: string | undefined, message: string): string {
  const k = `err.${code}` as Key;
  return k in tables[lang] ? translate(lang, k) : translate(lang, "err.generic", { message });
}
