"""Kernel slugs exactly as Kaggle computes them from a kernel's title, and the kernel a push reply names.

In:  a title (any text), a kernel id "owner/slug", a push reply's URL.
Out: `kaggle_slug(title)`; `slug_problem(kernel_id, title)`: why Kaggle would file the kernel under
     another slug ('' when it would not); `kernel_from_url(url)`: "owner/slug" of /code/owner/slug.

The rule (source: the kaggle client 2.2.5, `KaggleApi.kernels_push` in kaggle/api/kaggle_api_extended.py,
which warns "Your kernel title does not resolve to the specified id" when `slugify(title)` differs from
the id's slug; `slugify` is python-slugify's with its defaults): letters are folded to ASCII
(text-unidecode: "ï" -> "i", "ß" -> "ss", "日本" -> "ri-ben"), HTML entities decoded, a comma between
two digits dropped ("1,000" -> "1000"), everything lower-cased, every run of characters other than
a-z, 0-9 becomes one "-", and dashes are stripped from both ends; no length limit. When the id
differs, kaggle.com files a *new* kernel under its own slug and the reply's URL says which: kit
refuses such a title before anything is sent, and trusts the reply's URL when it still disagrees.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

CODE_PATH = "/code/"


def kaggle_slug(title: str) -> str:
    """The slug kaggle.com makes of `title` (see module docstring for the rule and its source)."""
    from slugify import slugify  # python-slugify, the kaggle client's own dependency

    return str(slugify(title))


def slug_problem(kernel_id: str, title: str | None) -> str:
    """'' when a push of `kernel_id` titled `title` lands under that id, else why it would not."""
    if not title:
        return ""
    slug = kernel_id.split("/", 1)[-1]
    made = kaggle_slug(title)
    if made == slug.lower():
        return ""
    return (f"Kaggle makes the slug {made!r} from the title {title!r}, not the id's {slug!r}, and would file "
            "the kernel where kit does not look")


def kernel_from_url(url: str) -> str | None:
    """"owner/slug" from a kernel URL or ref (".../code/owner/slug[/...]", "/code/owner/slug"); None if none."""
    path = unquote(urlsplit(url or "").path)
    if CODE_PATH not in path:
        return None
    parts = [p for p in path.split(CODE_PATH, 1)[1].split("/") if p]
    return f"{parts[0]}/{parts[1]}" if len(parts) >= 2 else None
