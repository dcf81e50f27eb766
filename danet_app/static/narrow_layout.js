// danet-lens: collapse Streamlit's sidebar once in a narrow window (a Components v2 module, no
// build step; mounted in the sidebar by app.py on every page, it draws nothing).
//
// initial_sidebar_state="auto" collapses the sidebar only at or below Streamlit's "md" breakpoint
// (768 px); at 800-1100 px it stays open and squeezes the main area (labels broke mid-word, the
// interactive image was 228x171 px at 800x900). Below NARROW_PX this clicks "Collapse sidebar"
// once, unless the sidebar's state was already chosen (Streamlit keeps the user's choice in
// localStorage under "stSidebarCollapsed-..."; our click stores it the same way, so a visitor who
// opens the sidebar again keeps it open).
const NARROW_PX = 1100;

function chosen() {
  try {
    for (let i = 0; i < window.localStorage.length; i++) {
      if (window.localStorage.key(i).startsWith("stSidebarCollapsed-")) return true;
    }
  } catch (error) { return true; }          // no storage: leave the sidebar alone
  return false;
}

function collapse(tries) {
  const sidebar = document.querySelector("[data-testid='stSidebar']");
  const button = document.querySelector("[data-testid='stSidebarCollapseButton'] button");
  if (sidebar && sidebar.dataset.collapsed === "true") return;
  if (sidebar && button) { button.click(); return; }
  if (tries > 0) setTimeout(() => collapse(tries - 1), 100);
}

export default function (component) {
  const { parentElement } = component;
  if (parentElement.dataset && parentElement.dataset.narrowChecked) return undefined;
  if (parentElement.dataset) parentElement.dataset.narrowChecked = "1";
  if (window.innerWidth < NARROW_PX && !chosen()) collapse(50);
  return undefined;
}
