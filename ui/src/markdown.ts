import { marked } from "marked";
import DOMPurify from "dompurify";

/** Markdown (GFM, code blocks) to sanitised HTML: model output is never trusted markup. */
export function markdown(src: string): string {
  return DOMPurify.sanitize(marked.parse(src, { async: false, gfm: true, breaks: true }) as string);
}
