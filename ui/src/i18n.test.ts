import { describe, expect, it } from "vitest";
import { errorText, initialLang, translate } from "./i18n";
import { sseParser } from "./api";

describe("i18n", () => {
  it("defaults from the browser language and remembers a choice", () => {
    expect(initialLang(null, ["zh-CN", "en"])).toBe("zh-CN");
    expect(initialLang(null, ["de-DE", "en-US"])).toBe("en");
    expect(initialLang("en", ["zh-TW"])).toBe("en");
  });
  it("fills variables and localises API errors by code", () => {
    expect(translate("en", "kb.confirmDelete", { name: "hr" })).toContain("“hr”");
    expect(errorText("zh-CN", "invalid_credentials", "wrong")).toBe("用户名或密码错误。");
    expect(errorText("en", "something_new", "raw message")).toBe("Something went wrong: raw message");
  });
});

describe("sse parser", () => {
  it("joins events split across chunks and ignores comments", () => {
    const feed = sseParser();
    expect(feed('data: {"a":1}\n\n: keep-alive\n\nda')).toEqual(['{"a":1}']);
    expect(feed("ta: [DONE]\r\n\r\n")).toEqual(["[DONE]"]);
  });
});
