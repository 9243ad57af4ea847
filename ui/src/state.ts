// App-wide state as signals: language, session.
import { signal } from "@preact/signals";
import { initialLang, type Lang } from "./i18n";

export const signalLang = signal<Lang>(initialLang(localStorage.getItem("maasbox.lang"), navigator.languages ?? [navigator.language]));

export function setLang(l: Lang) {
  signalLang.value = l;
  localStorage.setItem("maasbox.lang", l);
  document.documentElement.lang = l;
}

export interface User {
  username: string;
  role: string;
}

/** The signed-in user (null: signed out). */
export const currentUser = signal<User | null>(null);
